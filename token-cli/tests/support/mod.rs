//! What the end-to-end tests share: a hand-written OAuth token endpoint on
//! loopback that counts its calls, and a sandbox (temporary HOME and XDG
//! directories) to run the built `tokencache` binary in.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The client the test IdP accepts.
pub(crate) const CLIENT_ID: &str = "cli-test-client";
/// Its secret (tests check it never shows in any output).
pub(crate) const SECRET: &str = "s3cret-Value-that-must-never-print";
/// The environment variable the tests put the secret in.
pub(crate) const SECRET_ENV: &str = "CLI_TEST_SECRET";

/// A token endpoint on 127.0.0.1: `POST /token` (client credentials with
/// `client_secret_basic` or `_post`), `GET /.well-known/openid-configuration`.
pub(crate) struct Idp {
    pub(crate) base: String,
    requests: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    scopes: Arc<Mutex<Vec<String>>>,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Idp {
    /// Starts an IdP issuing tokens that live `lifetime` seconds.
    pub(crate) fn start(lifetime: u64) -> Self {
        Self::start_on(lifetime, 0)
    }

    /// [`start`](Self::start) on loopback port `port` (0: any free one),
    /// for an IdP that comes up after its clients.
    pub(crate) fn start_on(lifetime: u64, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let (r, c, s, t, b) = (
            requests.clone(),
            calls.clone(),
            scopes.clone(),
            tokens.clone(),
            base.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (c, s, t, b) = (c.clone(), s.clone(), t.clone(), b.clone());
                let r = r.clone();
                std::thread::spawn(move || serve(stream, &r, &c, &s, &t, &b, lifetime));
            }
        });
        Self {
            base,
            requests,
            calls,
            scopes,
            tokens,
        }
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    /// HTTP requests received, to any path (discovery included).
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Token requests received (any outcome).
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `scope` parameter of each token request.
    pub(crate) fn scopes(&self) -> Vec<String> {
        self.scopes.lock().expect("lock").clone()
    }

    /// Every token issued.
    pub(crate) fn tokens(&self) -> Vec<String> {
        self.tokens.lock().expect("lock").clone()
    }
}

fn serve(
    stream: TcpStream,
    requests: &AtomicUsize,
    calls: &AtomicUsize,
    scopes: &Mutex<Vec<String>>,
    tokens: &Mutex<Vec<String>>,
    base: &str,
    lifetime: u64,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut len = 0;
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_owned();
            }
        }
    }
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut content_type = "application/json";
    let body = String::from_utf8_lossy(&body).into_owned();
    let form: Vec<(String, String)> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let param = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (status, json) = if line.starts_with("GET /.well-known/openid-configuration") {
        (
            "200 OK",
            format!(r#"{{"issuer":"{base}","token_endpoint":"{base}/token"}}"#),
        )
    } else if line.starts_with("POST /token ") {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        scopes
            .lock()
            .expect("lock")
            .push(param("scope").unwrap_or_default());
        let basic = format!("Basic {}", b64(&format!("{CLIENT_ID}:{SECRET}")));
        let ok = auth == basic
            || (param("client_id").as_deref() == Some(CLIENT_ID)
                && param("client_secret").as_deref() == Some(SECRET));
        if ok {
            let token = format!("tok-{n}-{}", std::process::id());
            tokens.lock().expect("lock").push(token.clone());
            (
                "200 OK",
                format!(
                    r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{lifetime}}}"#
                ),
            )
        } else {
            (
                "401 Unauthorized",
                r#"{"error":"invalid_client","error_description":"client authentication failed"}"#
                    .to_owned(),
            )
        }
    } else {
        // What a web server answers for a path it does not have.
        content_type = "text/html; charset=utf-8";
        (
            "404 Not Found",
            "<!DOCTYPE html><html><head><title>404 Not Found</title></head>\
             <body><h1>Not Found</h1></body></html>"
                .to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Temporary HOME, XDG_CACHE_HOME and XDG_CONFIG_HOME for one test.
pub(crate) struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The default sled store directory.
    pub(crate) fn store_dir(&self) -> PathBuf {
        self.path().join("cache").join("tokencache")
    }

    /// The default key file.
    pub(crate) fn key_file(&self) -> PathBuf {
        self.path().join("config").join("tokencache").join("key")
    }

    /// The default profile file.
    pub(crate) fn config_file(&self) -> PathBuf {
        self.path()
            .join("config")
            .join("tokencache")
            .join("config.toml")
    }

    /// `tokencache` in the sandbox, with the client secret in [`SECRET_ENV`].
    pub(crate) fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokencache"));
        for var in [
            "TOKENCACHE_KEY",
            "TOKENCACHE_KEY_FILE",
            "TOKENCACHE_CONFIG",
            "TOKENCACHE_REDIS_PASSWORD",
            "TOKENCACHE_STATE_DIR",
            "XDG_CACHE_HOME",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.path().join("home"))
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env(SECRET_ENV, SECRET);
        cmd
    }

    /// `tokencache get` against `idp` with the secret from the environment.
    pub(crate) fn get(&self, idp: &Idp, extra: &[&str]) -> Output {
        let url = idp.token_url();
        let mut args = vec![
            "get",
            "--token-url",
            &url,
            "--client-id",
            CLIENT_ID,
            "--client-secret-env",
            SECRET_ENV,
        ];
        args.extend_from_slice(extra);
        self.cmd().args(&args).output().expect("run tokencache")
    }
}

/// stdout as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub(crate) fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstderr: {}",
        o.status.code(),
        stderr(o)
    );
}

/// The JSON object `get --format json` printed.
pub(crate) fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("stdout is JSON")
}
