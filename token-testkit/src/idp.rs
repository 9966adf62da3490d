//! The real authorization server of the tests: panva's `oidc-provider`
//! (npm), configured by `token-http/tests/idp/server.js` and installed by
//! `cargo xtask test` (`npm ci` there).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::ci::{require, skip_or_fail};

/// A running `node server.js <keys dir>`: the provider over HTTP
/// ([`issuer`](Self::issuer)), and the same provider over HTTPS asking for
/// client certificates ([`tls_base`](Self::tls_base)), both on free
/// loopback ports.
///
/// Killed when dropped; it also exits by itself when its standard input
/// closes, so a [`shared`](Self::shared) server goes with the test process.
#[derive(Debug)]
pub struct Idp {
    issuer: String,
    tls_base: String,
    child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

impl Idp {
    /// `token-http/tests/idp`: `server.js` and its `node_modules` (which
    /// also hold `jose`, for tests that sign their own assertions).
    pub fn server_dir() -> PathBuf {
        workspace().join("token-http/tests/idp")
    }

    /// `token-http/tests/keys`: the test-only keys and certificates the
    /// server registers.
    pub fn keys_dir() -> PathBuf {
        workspace().join("token-http/tests/keys")
    }

    /// Starts a server of this test's own, or says why it cannot run here.
    pub fn start() -> Result<Self, String> {
        let dir = Self::server_dir();
        if !dir.join("node_modules/oidc-provider").exists() {
            return Err(format!(
                "oidc-provider is not installed: run `cargo xtask test`, or `npm ci` in {}",
                dir.display()
            ));
        }
        let mut child = Command::new("node")
            .arg("server.js")
            .arg(Self::keys_dir())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("could not start `node` (install Node.js 20+): {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut next_line = |prefix: &str| -> Result<String, String> {
            let line = lines
                .next()
                .unwrap_or_else(|| Ok(String::new()))
                .map_err(|e| format!("reading the server's ready lines: {e}"))?;
            line.trim()
                .strip_prefix(prefix)
                .map(str::to_owned)
                .ok_or_else(|| {
                    format!("the IdP did not start (said {line:?}); see its output above")
                })
        };
        let urls = next_line("READY ").and_then(|issuer| Ok((issuer, next_line("MTLS ")?)));
        let (issuer, tls_base) = urls.inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })?;
        Ok(Self {
            issuer,
            tls_base,
            child: Mutex::new(child),
            _stdin: Mutex::new(stdin),
        })
    }

    /// One server for the whole test process, started by the first test
    /// that asks; `None` (after [`skip_or_fail`]) when it cannot run here.
    ///
    /// Its counters are shared too: a test that asserts exact counts of
    /// token requests uses [`private`](Self::private) instead.
    ///
    /// # Panics
    ///
    /// Under CI, when the server cannot run.
    pub fn shared() -> Option<&'static Self> {
        static IDP: OnceLock<Result<Idp, String>> = OnceLock::new();
        match IDP.get_or_init(Self::start) {
            Ok(idp) => Some(idp),
            Err(why) => skip_or_fail(format!("the oidc-provider test IdP cannot run: {why}")),
        }
    }

    /// A server of this test's own; `None` (after [`skip_or_fail`]) when it
    /// cannot run here.
    ///
    /// # Panics
    ///
    /// Under CI, when the server cannot run.
    pub fn private() -> Option<Self> {
        require(
            Self::start().map_err(|why| format!("the oidc-provider test IdP cannot run: {why}")),
        )
    }

    /// The issuer, `http://127.0.0.1:<port>` (discovery lives under it).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint, `<issuer>/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `https://127.0.0.1:<port>`: the same provider behind TLS (certificate
    /// from `ca-test-only.crt` in [`keys_dir`](Self::keys_dir)) asking for
    /// client certificates; its token endpoint is `<tls_base>/token`.
    pub fn tls_base(&self) -> &str {
        &self.tls_base
    }

    /// How many `POST /token` the server has received
    /// (`GET /__test/token-requests`).
    ///
    /// Blocking (a short loopback call), so sync and async tests alike can
    /// use it; the same for the other `/__test` helpers but
    /// [`introspect`](Self::introspect).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn token_requests(&self) -> u64 {
        let v = self.test_call("GET", "/__test/token-requests");
        v["count"].as_u64().expect("count")
    }

    /// A new grant's first refresh token for `refresh-client`, and the
    /// grant's account (`POST /__test/refresh-token`).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn refresh_token(&self) -> (String, String) {
        let v = self.test_call("POST", "/__test/refresh-token");
        (
            v["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
            v["account"].as_str().expect("account").to_owned(),
        )
    }

    /// How many rotated-away refresh tokens of `account`'s grant were
    /// presented again (`GET /__test/refresh-reuse`).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn refresh_reuse(&self, account: &str) -> u64 {
        let v = self.test_call("GET", &format!("/__test/refresh-reuse?account={account}"));
        v["count"].as_u64().expect("count")
    }

    /// Every refresh token issued to `account`'s grant
    /// (`GET /__test/refresh-tokens`).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn refresh_tokens(&self, account: &str) -> Vec<String> {
        let v = self.test_call("GET", &format!("/__test/refresh-tokens?account={account}"));
        v["refresh_tokens"]
            .as_array()
            .expect("refresh_tokens")
            .iter()
            .map(|t| t.as_str().expect("a refresh token").to_owned())
            .collect()
    }

    /// `count` subject tokens (JWTs signed by the server, `sub` =
    /// `<prefix>-<i>`, valid `ttl_seconds`) for its exchange grants
    /// (`POST /__test/subjects`).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn subject_tokens(&self, prefix: &str, count: usize, ttl_seconds: i64) -> Vec<String> {
        let body = serde_json::json!({ "prefix": prefix, "count": count, "ttl": ttl_seconds });
        let v = self.test_call_with("POST", "/__test/subjects", &body.to_string());
        v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_str().expect("a subject token").to_owned())
            .collect()
    }

    /// Makes the server refuse `subject_token` from now on
    /// (`POST /__test/revoke-subject`).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn revoke_subject(&self, subject_token: &str) {
        let body = serde_json::json!({ "token": subject_token });
        self.test_call_with("POST", "/__test/revoke-subject", &body.to_string());
    }

    /// The server's exchange counts for subjects whose `sub` starts with
    /// `prefix`: (total, distinct subjects, most for one subject, subject
    /// tokens rejected under any prefix) (`GET /__test/exchanges`).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub fn exchange_counts(&self, prefix: &str) -> (u64, u64, u64, u64) {
        let v = self.test_call("GET", &format!("/__test/exchanges?prefix={prefix}"));
        let n = |k: &str| v[k].as_u64().expect(k);
        (
            n("total"),
            n("distinct"),
            n("max_per_subject"),
            n("rejected"),
        )
    }

    /// The server's record of an access token, its client and certificate
    /// binding (`cnf.x5t#S256`) among it (`POST /__test/introspect` on
    /// [`tls_base`](Self::tls_base)).
    ///
    /// # Panics
    ///
    /// When the server does not answer as `server.js` does.
    pub async fn introspect(&self, access_token: &str) -> serde_json::Value {
        let ca = std::fs::read(Self::keys_dir().join("ca-test-only.crt")).expect("the test CA");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("the test CA"))
            .build()
            .expect("a client");
        let body = client
            .post(format!("{}/__test/introspect", self.tls_base))
            .body(format!("token={access_token}"))
            .send()
            .await
            .expect("introspect")
            .text()
            .await
            .expect("introspect body");
        serde_json::from_str(&body).expect("introspect JSON")
    }

    /// One `/__test` call on the issuer, its JSON answer.
    fn test_call(&self, method: &str, path: &str) -> serde_json::Value {
        self.test_call_with(method, path, "")
    }

    /// One `/__test` call on the issuer with `body`, its JSON answer.
    fn test_call_with(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let host = self.issuer.trim_start_matches("http://");
        http_json(method, host, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on the test IdP: {e}"))
    }
}

/// A plain HTTP/1.1 request with `body` (may be empty); the JSON line of
/// the answer (the one line that starts with `{`, whatever the transfer
/// encoding).
fn http_json(method: &str, host: &str, path: &str, body: &str) -> io::Result<serde_json::Value> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| io::Error::other(format!("no body in {text:?}")))?;
    let line = body
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| io::Error::other(format!("no JSON in {text:?}")))?;
    serde_json::from_str(line).map_err(io::Error::other)
}
