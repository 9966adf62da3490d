//! `tokencache serve` without a writable HOME: with a state directory
//! (`TOKENCACHE_STATE_DIR` / `--state-dir`) it keeps its sled store and key
//! there; without one it keeps tokens in memory and says how to fix it.
//! And the one-shot commands on a store that serve holds answer at once,
//! naming serve and its pid. Real processes throughout.

mod sidecar;
mod support;

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use sidecar::{fake_profile, free_addr, route, spawn_serve_cmd, upstream, wait_ready, FakeIdp};
use support::{Sandbox, SECRET};

/// The sandbox's command without HOME, XDG directories or a state
/// directory.
fn homeless(sandbox: &Sandbox) -> Command {
    let mut cmd = sandbox.cmd();
    for var in [
        "HOME",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env_remove("TOKENCACHE_STATE_DIR");
    cmd
}

fn config(
    sandbox: &Sandbox,
    idp: &FakeIdp,
    upstream: &token_testkit::Upstream,
) -> std::path::PathBuf {
    let path = sandbox.path().join("serve.toml");
    // No `store`: the default sled store.
    let profile = fake_profile("orders", idp, "sled").replace("store = \"sled\"\n", "");
    std::fs::write(
        &path,
        format!(
            "{profile}\n[serve]\nlisten = \"{}\"\n{}",
            free_addr(),
            route("/orders/", upstream, "orders")
        ),
    )
    .expect("write config");
    path
}

fn readable_by_all(path: &Path) {
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_home_unset_keeps_its_store_in_the_state_dir_and_inspect_names_it() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = config(&sandbox, &idp, &upstream);
    let state = sandbox.path().join("state");
    let mut cmd = homeless(&sandbox);
    cmd.env("TOKENCACHE_STATE_DIR", &state);
    let serve = spawn_serve_cmd(cmd, &config, &[], Stdio::inherit());
    assert!(wait_ready(&serve.base), "serve became ready without HOME");
    let r = reqwest::get(format!("{}/orders/x", serve.base))
        .await
        .expect("gateway");
    assert_eq!(r.status(), 200);
    assert!(
        state.join("store").is_dir(),
        "the sled store is in the state dir"
    );
    assert!(
        state.join("key").is_file(),
        "the key file is in the state dir"
    );
    let owner = std::fs::read_to_string(state.join("store").join("tokencache-owner"))
        .expect("the owner file");
    assert!(
        owner.contains(&format!("pid={}", serve.child.id())) && owner.contains("command=serve"),
        "{owner}"
    );

    // The one-shot commands on the store serve holds: at once, naming it
    // (not the 10 s wait for a lock, whose message differs).
    let config_arg = config.to_str().expect("utf-8 path");
    for args in [
        &["inspect"][..],
        &["purge", "--all"][..],
        &["purge", "--all", "--force"][..],
        &["get", "--config", config_arg, "--profile", "orders"][..],
    ] {
        let out = homeless(&sandbox)
            .arg(args[0])
            .args(["--state-dir"])
            .arg(&state)
            .args(&args[1..])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert!(
            err.contains("in use by `tokencache serve`")
                && err.contains(&format!("pid {}", serve.child.id())),
            "{args:?}: {err}"
        );
        assert!(!err.contains(SECRET) && !err.contains("tok-"), "{err}");
    }
    // The gateway still works: nothing was purged.
    let r = reqwest::get(format!("{}/orders/y", serve.base))
        .await
        .expect("gateway");
    assert_eq!(r.status(), 200);
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_unwritable_home_and_no_state_dir_keeps_tokens_in_memory_and_says_so() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = config(&sandbox, &idp, &upstream);
    let home = sandbox.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = homeless(&sandbox);
    cmd.env("HOME", &home);
    // Root writes anywhere: run as an unprivileged user (nobody) then, to
    // whom the sandbox is readable and HOME is not writable.
    if rustix_is_root() {
        for p in [sandbox.path(), &home, &config] {
            readable_by_all(p);
        }
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    let mut serve = spawn_serve_cmd(cmd, &config, &[], Stdio::piped());
    assert!(
        wait_ready(&serve.base),
        "serve became ready without a writable HOME"
    );
    let r = reqwest::get(format!("{}/orders/x", serve.base))
        .await
        .expect("gateway");
    assert_eq!(r.status(), 200);
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    let mut err = String::new();
    serve
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(
        err.contains("keeping tokens in memory") && err.contains("TOKENCACHE_STATE_DIR"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert!(
        std::fs::read_dir(&home).expect("home").next().is_none(),
        "nothing written to HOME"
    );
}

#[test]
fn get_without_home_or_state_dir_names_the_state_dir() {
    let sandbox = Sandbox::new();
    let out = homeless(&sandbox)
        .args([
            "get",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--client-id",
            "c",
            "--client-secret-env",
            support::SECRET_ENV,
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--state-dir") && err.contains("TOKENCACHE_STATE_DIR"),
        "{err}"
    );
}

/// Whether this test runs as root (uid 0).
fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_unwritable_home_uses_the_state_dir_it_is_given() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = config(&sandbox, &idp, &upstream);
    let home = sandbox.path().join("home");
    let state = sandbox.path().join("state");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&state).expect("state");
    let mut cmd = homeless(&sandbox);
    cmd.env("HOME", &home).env("TOKENCACHE_STATE_DIR", &state);
    if rustix_is_root() {
        for p in [sandbox.path(), &home, &config] {
            readable_by_all(p);
        }
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    let mut serve = spawn_serve_cmd(cmd, &config, &[], Stdio::piped());
    assert!(wait_ready(&serve.base), "serve became ready");
    let r = reqwest::get(format!("{}/orders/x", serve.base))
        .await
        .expect("gateway");
    assert_eq!(r.status(), 200);
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    let mut err = String::new();
    serve
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(!err.contains("keeping tokens in memory"), "{err}");
    assert!(
        state.join("store").join("tokencache-owner").is_file(),
        "{err}"
    );
    assert!(state.join("key").is_file(), "{err}");
    assert!(
        std::fs::read_dir(&home).expect("home").next().is_none(),
        "nothing written to HOME"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_home_unset_and_no_state_dir_keeps_tokens_in_memory_and_says_so() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = config(&sandbox, &idp, &upstream);
    let mut serve = spawn_serve_cmd(homeless(&sandbox), &config, &[], Stdio::piped());
    assert!(wait_ready(&serve.base), "serve became ready without HOME");
    let r = reqwest::get(format!("{}/orders/x", serve.base))
        .await
        .expect("gateway");
    assert_eq!(r.status(), 200);
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    let mut err = String::new();
    serve
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(
        err.contains("keeping tokens in memory")
            && err.contains("cannot find a home directory")
            && err.contains("--state-dir"),
        "{err}"
    );
}
