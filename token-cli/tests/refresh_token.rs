//! `tokencache get --refresh-token-env / --refresh-token-file` end to end,
//! against a real authorization server that rotates refresh tokens and
//! revokes the grant when a rotated-away one is presented again: panva's
//! `oidc-provider`, configured by `token-http/tests/idp/server.js` and
//! installed by `cargo xtask test` (`npm ci` there). Without Node.js or the
//! package the tests skip loudly; under `CI` they fail. The Redis test also
//! needs `redis-server` (or `TOKEN_CACHE_REDIS_URL`), the same way.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use support::{json, ok, stderr, stdout, Sandbox};
use token_testkit::{redis_standalone, Idp};

const RT_ENV: &str = "CLI_TEST_REFRESH_TOKEN";
const CLIENT: &str = "refresh-client";

fn get(sb: &Sandbox, idp: &Idp, rt: &str, extra: &[&str]) -> Output {
    let url = idp.token_url();
    let mut args = vec!["get", "--token-url", &url, "--client-id", CLIENT];
    args.extend_from_slice(extra);
    sb.cmd()
        .env(RT_ENV, rt)
        .args(&args)
        .output()
        .expect("run tokencache")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn assert_nowhere(refresh_tokens: &[String], outputs: &[&Output], dir: &Path) {
    for rt in refresh_tokens {
        for o in outputs {
            assert!(
                !stdout(o).contains(rt.as_str()),
                "a refresh token on stdout"
            );
            assert!(
                !stderr(o).contains(rt.as_str()),
                "a refresh token on stderr"
            );
        }
        for f in files(dir) {
            let bytes = std::fs::read(&f).expect("read");
            assert!(
                !bytes.windows(rt.len()).any(|w| w == rt.as_bytes()),
                "a refresh token in clear in {}",
                f.display()
            );
        }
    }
}

#[test]
fn rotated_refresh_tokens_are_kept_and_the_newest_is_redeemed_by_the_next_invocation() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let sb = Sandbox::new();
    let rt_file = sb.path().join("refresh-token");
    std::fs::write(&rt_file, format!("{rt0}\n")).expect("write");
    let rt_file = rt_file.to_str().expect("utf-8").to_owned();

    let env = ["--refresh-token-env", RT_ENV, "--format", "json"];
    let first = get(
        &sb,
        idp,
        &rt0,
        &[&env[..], &["--scope", "orders.read"]].concat(),
    );
    ok(&first);
    assert_eq!(json(&first)["from_cache"], false);
    // Every later invocation is still given the first refresh token, which
    // the server rotated away: only the stored newest one works.
    let second = get(
        &sb,
        idp,
        &rt0,
        &[&env[..], &["--scope", "orders.write"]].concat(),
    );
    ok(&second);
    assert_eq!(json(&second)["from_cache"], false);
    assert_ne!(json(&first)["access_token"], json(&second)["access_token"]);
    let third = get(
        &sb,
        idp,
        &rt0,
        &["--refresh-token-file", &rt_file, "--format", "json"],
    );
    ok(&third);
    assert_eq!(json(&third)["from_cache"], false);
    let cached = get(
        &sb,
        idp,
        &rt0,
        &[&env[..], &["--scope", "orders.read"]].concat(),
    );
    ok(&cached);
    assert_eq!(json(&cached)["from_cache"], true);

    assert_eq!(
        idp.refresh_reuse(&account),
        0,
        "a rotated-away refresh token was redeemed"
    );
    let issued = idp.refresh_tokens(&account);
    assert_eq!(issued.len(), 4, "one rotation per IdP call: {issued:?}");
    // `inspect` lists the refresh-token record with the client's tokens;
    // `purge --client-id` forgets it too, and the next get starts from the
    // first refresh token again (rotated away: the IdP refuses it).
    let listed = sb
        .cmd()
        .args(["inspect", "--json"])
        .output()
        .expect("inspect");
    ok(&listed);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(rows.len(), 4, "three tokens and the record: {rows:?}");
    assert!(rows
        .iter()
        .any(|r| r["key"].as_str().unwrap().contains("refresh-token")));
    // The store (and the index beside it) holds them encrypted only.
    assert!(!files(&sb.store_dir()).is_empty());
    assert_nowhere(
        &issued,
        &[&first, &second, &third, &cached, &listed],
        &sb.store_dir(),
    );
    let purged = sb
        .cmd()
        .args(["purge", "--client-id", CLIENT])
        .output()
        .expect("purge");
    ok(&purged);
    let after = get(&sb, idp, &rt0, &env);
    assert_eq!(after.status.code(), Some(4), "{}", stderr(&after));
    assert!(
        stderr(&after).contains("invalid_grant"),
        "{}",
        stderr(&after)
    );
}

#[test]
fn refresh_token_flags_name_what_is_wrong() {
    let sb = Sandbox::new();
    let run = |args: &[&str]| {
        sb.cmd()
            .env_remove(RT_ENV)
            .args(
                [
                    &[
                        "get",
                        "--token-url",
                        "http://127.0.0.1:9/token",
                        "--client-id",
                        CLIENT,
                    ][..],
                    args,
                ]
                .concat(),
            )
            .output()
            .expect("run")
    };
    let unset = run(&["--refresh-token-env", RT_ENV]);
    assert_eq!(unset.status.code(), Some(3), "{}", stderr(&unset));
    assert!(
        stderr(&unset).contains(&format!("{RT_ENV} (from --refresh-token-env) is not set")),
        "{}",
        stderr(&unset)
    );
    let empty_file = sb.path().join("empty");
    std::fs::write(&empty_file, "\n").expect("write");
    let empty = run(&["--refresh-token-file", empty_file.to_str().expect("utf-8")]);
    assert_eq!(empty.status.code(), Some(3), "{}", stderr(&empty));
    assert!(
        stderr(&empty).contains("the refresh token file") && stderr(&empty).contains("is empty"),
        "{}",
        stderr(&empty)
    );
    let both = run(&["--refresh-token-env", RT_ENV, "--refresh-token-file", "x"]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
}

#[test]
fn processes_sharing_redis_never_present_a_refresh_token_twice() {
    let Some(idp) = Idp::shared() else { return };
    let Some((redis_url, _redis)) = redis_standalone() else {
        return;
    };
    let (rt0, account) = idp.refresh_token();
    let sb = Sandbox::new();
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let url = idp.token_url();
    // Four keys (scope sets) at once, each asked by two processes, all
    // started from the same first refresh token.
    let scopes: [&[&str]; 4] = [
        &["--scope", "orders.read"],
        &["--scope", "orders.write"],
        &["--scope", "orders.read", "--scope", "orders.write"],
        &[],
    ];
    let children: Vec<Child> = (0..8)
        .map(|i| {
            sb.cmd()
                .env("TOKENCACHE_KEY", key)
                .env(RT_ENV, &rt0)
                .env(
                    "RUST_LOG",
                    "token_core=debug,token_http=debug,token_redis=debug",
                )
                .args(["get", "--token-url", &url, "--client-id", CLIENT])
                .args(["--refresh-token-env", RT_ENV, "--store", &redis_url])
                .args(scopes[i % 4])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    for o in &outputs {
        ok(o);
    }
    assert_eq!(
        idp.refresh_reuse(&account),
        0,
        "a rotated-away refresh token was redeemed"
    );
    let issued = idp.refresh_tokens(&account);
    // One redemption per key: the second process of each key adopts the
    // first one's token (or, arriving later, finds it cached).
    if issued.len() != 5 {
        for (i, o) in outputs.iter().enumerate() {
            eprintln!("=== child {i} (scopes {:?})\n{}", scopes[i % 4], stderr(o));
        }
    }
    assert_eq!(issued.len(), 1 + 4, "{issued:?}");
    let refs: Vec<&Output> = outputs.iter().collect();
    assert_nowhere(&issued, &refs, sb.path());
}
