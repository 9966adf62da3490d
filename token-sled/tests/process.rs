//! Tests that need more than one process: a writer killed with SIGKILL, a
//! restart that finds the previous process's token, a second process on a
//! locked database, a disk that fills up.
//!
//! The test binary re-executes itself as the child: with `TOKEN_SLED_CHILD`
//! set, `main` runs that child role instead of the trials.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{fake_idp, key, request, token};
use token_conformance::libtest_mimic::{Arguments, Failed, Trial};
use token_core::{CacheStore, EncryptionKey, Keyring, StoreError, TokenCache};
use token_sled::{SledError, SledStore};

const ROLE: &str = "TOKEN_SLED_CHILD";
const PATH: &str = "TOKEN_SLED_PATH";
const KEY: &str = "TOKEN_SLED_KEY";
const ISSUE: &str = "TOKEN_SLED_ISSUE";

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let code = child(&role);
        std::process::exit(code);
    }
    let args = Arguments::from_args();
    let mount_ns = mount_namespace_available();
    let trials = vec![
        Trial::test("sigkill_mid_writes_loses_no_write_that_returned", sigkill),
        Trial::test(
            "a_restarted_process_serves_the_stored_token_without_calling_the_idp",
            restart,
        ),
        Trial::test("a_second_process_gets_a_clear_lock_error", second_process),
        Trial::test(
            "a_file_size_limit_fails_put_clearly_and_the_engine_still_returns_the_token",
            file_size_limit,
        ),
        Trial::test(
            "a_full_disk_fails_put_clearly_and_the_engine_still_returns_the_token",
            full_disk,
        )
        .with_ignored_flag(!mount_ns),
        Trial::test("a_read_only_file_system_fails_open_clearly", read_only_dir)
            .with_ignored_flag(!mount_ns),
    ];
    if !mount_ns {
        eprintln!(
            "SKIPPING the full-disk and read-only tests: they mount a small tmpfs in a private \
             mount namespace (`unshare -m`), which needs root or CAP_SYS_ADMIN (under CI they run)"
        );
    }
    token_conformance::libtest_mimic::run(&args, trials).exit();
}

// ---------------------------------------------------------------- children

fn child(role: &str) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("child: no runtime: {e}");
            return 2;
        }
    };
    let path = std::env::var(PATH).unwrap_or_default();
    let keyring = || Keyring::new(EncryptionKey::from_env(KEY).expect("key from env"));
    rt.block_on(async {
        match role {
            "writer" => {
                let store = SledStore::open(&path, keyring()).await.expect("open");
                let mut out = std::io::stdout().lock();
                for i in 0..1_000_000u64 {
                    let t = token(&format!("sigkill-secret-{i}"));
                    store.put(&key(&format!("w{i}")), &t).await.expect("put");
                    // Reported only once put has returned.
                    writeln!(out, "{i}")
                        .and_then(|()| out.flush())
                        .expect("stdout");
                }
                0
            }
            "serve" => {
                let store = SledStore::open(&path, keyring()).await.expect("open");
                let idp = fake_idp(&std::env::var(ISSUE).unwrap_or_default());
                let cache = TokenCache::builder(Arc::clone(&idp)).store(store).build();
                let got = cache.get_token(&request()).await.expect("get_token");
                println!("calls={} token={}", idp.calls(), got.secret().expose());
                0
            }
            "open" => match SledStore::open(&path, keyring()).await {
                Ok(_) => {
                    println!("opened");
                    0
                }
                Err(e) => {
                    println!("error: {e}");
                    0
                }
            },
            "disk-full" => disk_full_child(&path, keyring()).await,
            other => {
                eprintln!("unknown role {other}");
                2
            }
        }
    })
}

/// Runs with a file-size limit: puts until the disk "fills", then asks the
/// engine for a token through the same store.
async fn disk_full_child(path: &str, keyring: Keyring) -> i32 {
    let store = SledStore::open(path, keyring).await.expect("open");
    let big = "x".repeat(4096);
    let mut failed: Option<StoreError> = None;
    for i in 0..5000 {
        if let Err(e) = store
            .put(&key(&format!("fill{i}")), &token(&format!("{big}{i}")))
            .await
        {
            failed = Some(e);
            break;
        }
    }
    let Some(err) = failed else {
        println!("put-never-failed");
        return 0;
    };
    println!(
        "put-error-kind={}",
        match err {
            StoreError::Io { .. } => "io",
            StoreError::Unavailable { .. } => "unavailable",
            _ => "other",
        }
    );
    println!("put-error={err}");
    let idp = fake_idp("disk-full-fresh-token");
    let cache = TokenCache::builder(Arc::clone(&idp)).store(store).build();
    match cache.get_token(&request()).await {
        Ok(t) => println!(
            "engine-token={} calls={} store-errors={}",
            t.secret().expose(),
            idp.calls(),
            cache.stats().store_errors
        ),
        Err(e) => println!("engine-error={e}"),
    }
    0
}

// ----------------------------------------------------------------- parents

fn child_command(role: &str, path: &Path, key: &EncryptionKey) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env(ROLE, role)
        .env(PATH, path)
        .env(KEY, &*key.to_base64())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

fn run_child(mut cmd: Command) -> Result<String, Failed> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run the child: {e}"))?;
    if !out.status.success() {
        return Err(format!("child failed: {:?}", out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn sigkill() -> Result<(), Failed> {
    const KILL_AFTER: usize = 2000;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens");
    let k = EncryptionKey::generate()?;
    let mut child = child_command("writer", &path, &k).spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut acked = BTreeSet::new();
    let mut line = Vec::new();
    let mut killed = false;
    loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        // A line cut short by the kill is not an acknowledgement.
        if line.last() != Some(&b'\n') {
            break;
        }
        let i: u64 = std::str::from_utf8(&line[..line.len() - 1])?.parse()?;
        acked.insert(i);
        if acked.len() == KILL_AFTER && !killed {
            child.kill()?; // SIGKILL
            killed = true;
        }
    }
    let status = child.wait()?;
    if !killed {
        return Err(format!("the writer ended before it was killed: {status:?}").into());
    }
    use std::os::unix::process::ExitStatusExt as _;
    if status.signal() != Some(9) {
        return Err(format!("the writer was not killed by SIGKILL: {status:?}").into());
    }

    let last = acked.last().copied().unwrap_or(0);
    runtime().block_on(async {
        let store = SledStore::open(&path, Keyring::new(k)).await?;
        if let Some(q) = store.quarantine() {
            return Err(format!("reopening quarantined the database: {q}").into());
        }
        for &i in &acked {
            match store.get(&key(&format!("w{i}"))).await? {
                Some(t) if t.secret().expose() == format!("sigkill-secret-{i}") => {}
                Some(_) => return Err(format!("write {i} came back with another token").into()),
                None => return Err(format!("write {i} returned but is not there").into()),
            }
        }
        // Writes in flight when the kill came may or may not be there, but
        // whatever is there decrypts.
        for i in last + 1..last + 16 {
            let _ = store.get(&key(&format!("w{i}"))).await?;
        }
        let corrupt = store.stats().corrupt_reads;
        if corrupt != 0 {
            return Err(format!("{corrupt} values failed to decrypt").into());
        }
        let entries = store.len() as u64;
        if entries < acked.len() as u64 {
            return Err(
                format!("{entries} entries for {} acknowledged writes", acked.len()).into(),
            );
        }
        Ok::<_, Failed>(())
    })
}

fn restart() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens");
    let k = EncryptionKey::generate()?;
    let mut first = child_command("serve", &path, &k);
    first.env(ISSUE, "issued-to-the-first-process");
    let out = run_child(first)?;
    if out.trim() != "calls=1 token=issued-to-the-first-process" {
        return Err(format!("first process: {out}").into());
    }
    let mut second = child_command("serve", &path, &k);
    second.env(ISSUE, "issued-to-the-second-process");
    let out = run_child(second)?;
    if out.trim() != "calls=0 token=issued-to-the-first-process" {
        return Err(format!("second process (expected zero IdP calls): {out}").into());
    }
    Ok(())
}

fn second_process() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens");
    let k = EncryptionKey::generate()?;
    let k2 = EncryptionKey::from_base64(&k.to_base64())?;
    runtime().block_on(async {
        let store = SledStore::open(&path, Keyring::new(k)).await?;
        store.put(&key("held"), &token("held-secret")).await?;
        let out = run_child(child_command("open", &path, &k2))?;
        let expected = format!("error: {}", SledError::Locked { path: path.clone() });
        if out.trim() != expected {
            return Err(format!("second process: {out:?}, expected {expected:?}").into());
        }
        // And the first process's data is intact.
        if store.get(&key("held")).await?.is_none() {
            return Err("the held token is gone".into());
        }
        Ok::<_, Failed>(())
    })?;
    // Once the first process lets go, the second opens it.
    std::thread::sleep(Duration::from_millis(100));
    let out = run_child(child_command("open", &path, &k2))?;
    if out.trim() != "opened" {
        return Err(format!("after the first closed: {out}").into());
    }
    Ok(())
}

/// True when this process may mount a tmpfs in a private mount namespace
/// (root, or CAP_SYS_ADMIN). Under `CI` it must: the tests then fail instead
/// of being skipped.
fn mount_namespace_available() -> bool {
    if token_testkit::in_ci() {
        return true;
    }
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The child `role` started by `sh -c script` (under `unshare -m` when
/// `private_mounts`), with the child's environment: in the script, `$0` is
/// this test binary and `$1` is `dir`.
fn shell_child(
    private_mounts: bool,
    script: &str,
    dir: &Path,
    role: &str,
    path: &Path,
    key: &EncryptionKey,
) -> Result<Command, Failed> {
    let template = child_command(role, path, key);
    let mut cmd = if private_mounts {
        let mut c = Command::new("unshare");
        c.args(["-m", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    cmd.arg("-c")
        .arg(script)
        .arg(std::env::current_exe()?)
        .arg(dir)
        .envs(
            template
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(cmd)
}

/// A file-size limit (RLIMIT_FSIZE, 2 MiB in dash's 512-byte blocks) makes
/// writes past it fail with EFBIG, the way a full disk fails them with
/// ENOSPC; unlike permissions it binds root too. SIGXFSZ is ignored so that
/// the write fails instead of killing the process.
fn file_size_limit() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens");
    let k = EncryptionKey::generate()?;
    let script = "trap '' XFSZ; ulimit -f 4096 && exec \"$0\"";
    let cmd = shell_child(false, script, dir.path(), "disk-full", &path, &k)?;
    let out = run_child(cmd)?;
    if !out.contains("File too large") {
        return Err(format!("the limit was not hit (EFBIG expected):\n{out}").into());
    }
    check_disk_full(&out, &path)
}

/// A real full disk: a 2 MiB tmpfs mounted over the test's directory in a
/// private mount namespace (nothing outside the child sees it).
fn full_disk() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens");
    let k = EncryptionKey::generate()?;
    let script = "mount -t tmpfs -o size=2m,mode=0700 none \"$1\" && exec \"$0\"";
    let cmd = shell_child(true, script, dir.path(), "disk-full", &path, &k)?;
    let out = run_child(cmd)?;
    if !out.contains("No space left on device") {
        return Err(format!("the disk did not fill (ENOSPC expected):\n{out}").into());
    }
    check_disk_full(&out, &path)
}

/// A read-only file system: opening fails at once, with an error naming the
/// path and the reason (the application then runs the engine without this
/// store, or not at all).
fn read_only_dir() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens");
    let k = EncryptionKey::generate()?;
    let script = "mount -t tmpfs -o ro,size=1m none \"$1\" && exec \"$0\"";
    let cmd = shell_child(true, script, dir.path(), "open", &path, &k)?;
    let out = run_child(cmd)?;
    let expected = format!(
        "error: cannot create the database directory {}",
        path.display()
    );
    if !out.starts_with(&expected) || !out.contains("Read-only file system") {
        return Err(format!("expected {expected:?} and the reason, got {out:?}").into());
    }
    Ok(())
}

/// What the `disk-full` child must have printed: `put` failed with a clear
/// `StoreError::Io` naming the database, and the engine still returned the
/// token it fetched.
fn check_disk_full(out: &str, path: &Path) -> Result<(), Failed> {
    let has = |line: &str| out.lines().any(|l| l == line);
    if !has("put-error-kind=io") {
        return Err(format!("put did not fail with StoreError::Io:\n{out}").into());
    }
    let err_line = out
        .lines()
        .find(|l| l.starts_with("put-error="))
        .unwrap_or("");
    if !err_line.contains("store I/O failed") || !err_line.contains(&path.display().to_string()) {
        return Err(format!("the put error is not clear:\n{out}").into());
    }
    if err_line.contains("xxxxxxxx") {
        return Err(format!("the put error shows the token:\n{out}").into());
    }
    let engine = out.lines().find(|l| l.starts_with("engine-")).unwrap_or("");
    if !engine.starts_with("engine-token=disk-full-fresh-token calls=1 store-errors=") {
        return Err(format!("the engine did not return the fetched token:\n{out}").into());
    }
    Ok(())
}
