//! What the tests of `tokencache serve` share: a controllable token
//! endpoint, the recording upstream they forward to, and the running
//! binary (`serve.rs`, `reload.rs`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use token_testkit::{free_port, skip_or_fail, HttpServer, Seen, Upstream};

use crate::support::{self, Sandbox};

/// One token request's form parameters.
pub(crate) type Form = Vec<(String, String)>;

/// A token endpoint issuing `tok-N` tokens that live `lifetime` seconds,
/// answering 503 while `down` and `400 invalid_scope` to a scope named
/// `refused.*`; it records the `scope` of each call, and its
/// form parameters other than client credentials (`calls_with`).
#[derive(Clone)]
pub(crate) struct FakeIdp {
    pub(crate) server: HttpServer,
    pub(crate) calls: Arc<AtomicUsize>,
    pub(crate) down: Arc<AtomicBool>,
    pub(crate) scopes: Arc<Mutex<Vec<String>>>,
    /// Each call's form, without `client_secret` and `client_assertion`.
    pub(crate) forms: Arc<Mutex<Vec<Form>>>,
}

impl FakeIdp {
    pub(crate) async fn start(lifetime: u64) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let forms = Arc::new(Mutex::new(Vec::new()));
        let (c, d, sc, f) = (calls.clone(), down.clone(), scopes.clone(), forms.clone());
        let server = HttpServer::start(move |req: Request<Incoming>| {
            let (c, d, sc, f) = (c.clone(), d.clone(), sc.clone(), f.clone());
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                if let Ok(b) = &body {
                    let form = form_urlencoded::parse(b)
                        .filter(|(k, _)| k != "client_secret" && k != "client_assertion")
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    f.lock().expect("lock").push(form);
                }
                let scope = body
                    .ok()
                    .and_then(|b| {
                        form_urlencoded::parse(&b)
                            .find(|(k, _)| k == "scope")
                            .map(|(_, v)| v.into_owned())
                    })
                    .unwrap_or_default();
                sc.lock().expect("lock").push(scope.clone());
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                // A scope named `refused.*` is refused as an IdP refuses
                // a scope the client may not have.
                if scope.split(' ').any(|s| s.starts_with("refused.")) {
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        br#"{"error":"invalid_scope","error_description":"the client may not have this scope"}"#,
                    )));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().expect("hv"));
                    return r;
                }
                if d.load(Ordering::SeqCst) {
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        br#"{"error":"temporarily_unavailable"}"#,
                    )));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return r;
                }
                let body = format!(
                    r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{lifetime}}}"#
                );
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("hv"));
                r
            }
        })
        .await;
        Self {
            server,
            calls,
            down,
            scopes,
            forms,
        }
    }

    /// How many calls sent the form parameter `name` = `value`.
    pub(crate) fn calls_with(&self, name: &str, value: &str) -> usize {
        self.forms
            .lock()
            .expect("lock")
            .iter()
            .filter(|form| form.iter().any(|(k, v)| k == name && v == value))
            .count()
    }

    /// How many calls asked for `scope`.
    pub(crate) fn calls_for(&self, scope: &str) -> usize {
        self.scopes
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| *s == scope)
            .count()
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/token", self.server.url())
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The recording upstream of these tests: answers `ok <path and query>`
/// with a hop-by-hop header of its own (`Connection: x-upstream-hop`), after
/// a second on paths ending in `/slow`.
pub(crate) async fn upstream() -> Upstream {
    Upstream::start_with(|seen: Seen| async move {
        if seen
            .path_and_query
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/slow"))
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "ok {}",
            seen.path_and_query
        ))));
        r.headers_mut()
            .insert("connection", "x-upstream-hop".parse().expect("hv"));
        r.headers_mut()
            .insert("x-upstream-hop", "1".parse().expect("hv"));
        r
    })
    .await
}

/// A hop-by-hop header of the caller's reached the upstream.
pub(crate) fn hop(seen: &Seen) -> bool {
    seen.headers.contains_key("x-hop") || seen.headers.contains_key("proxy-authorization")
}

/// A running `tokencache serve`, killed when dropped.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn write_config(sandbox: &Sandbox, text: &str) -> PathBuf {
    let path = sandbox.path().join("serve.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `serve --config path` and waits for its `listening on` line.
pub(crate) fn start_serve(sandbox: &Sandbox, config: &Path) -> Serve {
    start_serve_with(sandbox, config, &[], Stdio::inherit())
}

/// Starts `serve --config path` (with `extra` arguments) and waits until
/// it listens and every profile has its first token (`/readyz` 200).
pub(crate) fn start_serve_with(
    sandbox: &Sandbox,
    config: &Path,
    extra: &[&str],
    stderr: Stdio,
) -> Serve {
    let serve = spawn_serve_cmd(sandbox.cmd(), config, extra, stderr);
    wait_ready(&serve.base);
    serve
}

/// Starts `serve --config path` and returns as soon as it listens, its
/// first tokens perhaps not fetched yet.
pub(crate) fn spawn_serve(sandbox: &Sandbox, config: &Path, stderr: Stdio) -> Serve {
    spawn_serve_cmd(sandbox.cmd(), config, &[], stderr)
}

/// Runs `cmd serve --config path extra...` (a sandbox's command, perhaps
/// with environment of its own) and returns once it prints `listening on`.
pub(crate) fn spawn_serve_cmd(
    mut cmd: std::process::Command,
    config: &Path,
    extra: &[&str],
    stderr: Stdio,
) -> Serve {
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start tokencache serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let base = listening_address(&line)
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("serve did not start; it said {line:?}")
        })
        .to_owned();
    Serve { child, base }
}

/// The `http://ADDR` of serve's first stdout line: `listening on
/// http://ADDR`, or under `--log-format json` a JSON line with it in
/// `fields.address`.
pub(crate) fn listening_address(line: &str) -> Option<String> {
    let line = line.trim();
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return v["fields"]["address"].as_str().map(str::to_owned);
    }
    line.strip_prefix("listening on ").map(str::to_owned)
}

/// The status of `GET path` on `base` (`http://ADDR`), over a new
/// connection; `None` when there is no answer.
pub(crate) fn get_status(base: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Waits (up to 20 s) until the sidecar at `base` says it is ready: the
/// start-up prefetch runs after it starts listening. Returns whether it did.
pub(crate) fn wait_ready(base: &str) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        if get_status(base, "/readyz") == Some(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub(crate) fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

pub(crate) fn fake_profile(name: &str, idp: &FakeIdp, store: &str) -> String {
    format!(
        "[profiles.{name}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"{store}\"\n",
        idp.token_url(),
        support::CLIENT_ID,
        support::SECRET_ENV
    )
}

pub(crate) fn route(prefix: &str, upstream: &Upstream, profile: &str) -> String {
    format!(
        "[[serve.routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{}/base\"\nprofile = \"{profile}\"\n",
        upstream.addr()
    )
}

/// The venv `cargo xtask test` creates (xtask/src/venv.rs), or `None` after
/// saying why (a failure under CI).
pub(crate) fn vendor_python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vendor-venv/bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import azure.identity, google.auth, requests"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "the vendor client libraries are not installed in {}: run `cargo xtask test` (or \
         `python3 -m venv target/vendor-venv && target/vendor-venv/bin/pip install -r \
         token-cli/tests/vendor/requirements.txt`)",
        python.display()
    );
    skip_or_fail(why)
}

pub(crate) fn vendor_client(python: &Path, envs: &[(&str, String)], args: &[&str]) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/clients.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args);
    for var in [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
        "GCE_METADATA_HOST",
        "GCE_METADATA_ROOT",
        "GCE_METADATA_IP",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "GCLOUD_PROJECT",
        "CLOUDSDK_CONFIG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1")
        .envs(envs.iter().map(|(k, v)| (*k, v)));
    let out = cmd.output().expect("run python");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
