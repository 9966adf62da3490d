//! `tokencache get --refresh-token-env / --refresh-token-file` end to end,
//! against a real authorization server that rotates refresh tokens and
//! revokes the grant when a rotated-away one is presented again: panva's
//! `oidc-provider`, configured by `token-http/tests/idp/server.js` and
//! installed by `cargo xtask test` (`npm ci` there). Without Node.js or the
//! package the tests skip loudly; under `CI` they fail. The Redis test also
//! needs `redis-server` (or `TOKEN_CACHE_REDIS_URL`), the same way.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{json, ok, stderr, stdout, Sandbox};

const RT_ENV: &str = "CLI_TEST_REFRESH_TOKEN";
const CLIENT: &str = "refresh-client";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The oidc-provider test server, killed when dropped.
struct Idp {
    issuer: String,
    child: Child,
    _stdin: ChildStdin,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_idp() -> Option<Idp> {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../token-http/tests");
    let dir = tests.join("idp");
    let skip = |why: String| {
        assert!(
            !ci(),
            "these tests need the oidc-provider test IdP and CI is set: {why}"
        );
        eprintln!("\n*** SKIPPING token-cli refresh-token tests: {why}\n");
        None
    };
    if !dir.join("node_modules/oidc-provider").exists() {
        return skip(format!(
            "oidc-provider is not installed: run `cargo xtask test`, or `npm ci` in {}",
            dir.display()
        ));
    }
    let mut child = match Command::new("node")
        .arg("server.js")
        .arg(tests.join("keys"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return skip(format!("cannot start `node` (is Node.js installed?): {e}")),
    };
    let stdin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let issuer = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("the IdP did not start: {line:?}"))
        .to_owned();
    Some(Idp {
        issuer,
        child,
        _stdin: stdin,
    })
}

fn http(method: &str, url: &str) -> serde_json::Value {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = TcpStream::connect(host).expect("connect to the IdP");
    use std::io::{Read, Write};
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let body = text.split("\r\n\r\n").nth(1).expect("body");
    // The server answers with chunked encoding: the JSON is the one line
    // that starts with `{`.
    let line = body
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {text:?}"));
    serde_json::from_str(line).expect("JSON")
}

impl Idp {
    fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// A new grant's first refresh token, and its account.
    fn first_refresh_token(&self) -> (String, String) {
        let v = http("POST", &format!("{}/__test/refresh-token", self.issuer));
        (
            v["refresh_token"].as_str().expect("rt").to_owned(),
            v["account"].as_str().expect("account").to_owned(),
        )
    }

    /// Rotated-away refresh tokens of `account`'s grant presented again.
    fn reuses(&self, account: &str) -> u64 {
        let v = http(
            "GET",
            &format!("{}/__test/refresh-reuse?account={account}", self.issuer),
        );
        v["count"].as_u64().expect("count")
    }

    /// Every refresh token issued to `account`.
    fn issued(&self, account: &str) -> Vec<String> {
        let v = http(
            "GET",
            &format!("{}/__test/refresh-tokens?account={account}", self.issuer),
        );
        v["refresh_tokens"]
            .as_array()
            .expect("list")
            .iter()
            .map(|t| t.as_str().expect("str").to_owned())
            .collect()
    }
}

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
    let Some(idp) = start_idp() else { return };
    let (rt0, account) = idp.first_refresh_token();
    let sb = Sandbox::new();
    let rt_file = sb.path().join("refresh-token");
    std::fs::write(&rt_file, format!("{rt0}\n")).expect("write");
    let rt_file = rt_file.to_str().expect("utf-8").to_owned();

    let env = ["--refresh-token-env", RT_ENV, "--format", "json"];
    let first = get(
        &sb,
        &idp,
        &rt0,
        &[&env[..], &["--scope", "orders.read"]].concat(),
    );
    ok(&first);
    assert_eq!(json(&first)["from_cache"], false);
    // Every later invocation is still given the first refresh token, which
    // the server rotated away: only the stored newest one works.
    let second = get(
        &sb,
        &idp,
        &rt0,
        &[&env[..], &["--scope", "orders.write"]].concat(),
    );
    ok(&second);
    assert_eq!(json(&second)["from_cache"], false);
    assert_ne!(json(&first)["access_token"], json(&second)["access_token"]);
    let third = get(
        &sb,
        &idp,
        &rt0,
        &["--refresh-token-file", &rt_file, "--format", "json"],
    );
    ok(&third);
    assert_eq!(json(&third)["from_cache"], false);
    let cached = get(
        &sb,
        &idp,
        &rt0,
        &[&env[..], &["--scope", "orders.read"]].concat(),
    );
    ok(&cached);
    assert_eq!(json(&cached)["from_cache"], true);

    assert_eq!(
        idp.reuses(&account),
        0,
        "a rotated-away refresh token was redeemed"
    );
    let issued = idp.issued(&account);
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
    let after = get(&sb, &idp, &rt0, &env);
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
    assert!(!unset.status.success());
    assert!(
        stderr(&unset).contains(&format!("{RT_ENV} (from --refresh-token-env) is not set")),
        "{}",
        stderr(&unset)
    );
    let empty_file = sb.path().join("empty");
    std::fs::write(&empty_file, "\n").expect("write");
    let empty = run(&["--refresh-token-file", empty_file.to_str().expect("utf-8")]);
    assert!(!empty.status.success());
    assert!(
        stderr(&empty).contains("the refresh token file") && stderr(&empty).contains("is empty"),
        "{}",
        stderr(&empty)
    );
    let both = run(&["--refresh-token-env", RT_ENV, "--refresh-token-file", "x"]);
    assert!(!both.status.success());
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
}

/// A private redis-server, killed when dropped.
struct Redis(Option<Child>, String);

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis() -> Option<Redis> {
    if let Ok(url) = std::env::var("TOKEN_CACHE_REDIS_URL") {
        return Some(Redis(None, url));
    }
    let port = support::closed_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !ci(),
                "this test needs Redis and CI is set: cannot start redis-server: {e}"
            );
            eprintln!("\n*** SKIPPING token-cli refresh-token Redis test: cannot start redis-server ({e})\n");
            return None;
        }
    };
    let server = Redis(Some(child), format!("redis://127.0.0.1:{port}"));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

#[test]
fn processes_sharing_redis_never_present_a_refresh_token_twice() {
    let Some(idp) = start_idp() else { return };
    let Some(redis) = redis() else { return };
    let (rt0, account) = idp.first_refresh_token();
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
                .args(["get", "--token-url", &url, "--client-id", CLIENT])
                .args(["--refresh-token-env", RT_ENV, "--store", &redis.1])
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
        idp.reuses(&account),
        0,
        "a rotated-away refresh token was redeemed"
    );
    let issued = idp.issued(&account);
    // One redemption per key: the second process of each key adopts the
    // first one's token (or, arriving later, finds it cached).
    assert_eq!(issued.len(), 1 + 4, "{issued:?}");
    let refs: Vec<&Output> = outputs.iter().collect();
    assert_nowhere(&issued, &refs, sb.path());
}
