//! Redis servers for the tests: the ones `cargo xtask` started (env vars
//! `TOKEN_CACHE_REDIS_URL`, `TOKEN_CACHE_REDIS_CLUSTER_URLS`), or private
//! `redis-server` processes on free loopback ports, persistence off, in a
//! temp dir, killed when dropped. Never the system Redis on 6379.
//!
//! When no server can be had: under `CI` the test fails; otherwise it is
//! skipped, loudly.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use token_core::{CacheKey, StoreError};
use token_redis::redis;
use token_redis::RedisStore;

/// Env var with the standalone server's URL.
pub(crate) const REDIS_URL_ENV: &str = "TOKEN_CACHE_REDIS_URL";
/// Env var with the cluster's comma-separated node URLs.
pub(crate) const REDIS_CLUSTER_URLS_ENV: &str = "TOKEN_CACHE_REDIS_CLUSTER_URLS";

const RESERVED_PORTS: [u16; 2] = [6379, 16379];

pub(crate) fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Skips (loudly) or, under CI, fails.
pub(crate) fn unavailable<T>(what: &str, why: &str) -> Option<T> {
    if is_ci() {
        panic!("{what} needs Redis, and CI is set, so this is a failure: {why}");
    }
    eprintln!("\n*** SKIPPING {what}: {why}\n*** (install redis-server, or run `cargo xtask test`; under CI=true this fails)\n");
    None
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free loopback port (and `port + bus` when given), never 6379.
pub(crate) fn free_port(bus: Option<u16>) -> io::Result<u16> {
    for _ in 0..200 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if RESERVED_PORTS.contains(&port) {
            continue;
        }
        match bus {
            None => return Ok(port),
            Some(offset) => {
                let Some(b) = port.checked_add(offset) else {
                    continue;
                };
                if !RESERVED_PORTS.contains(&b)
                    && TcpListener::bind((Ipv4Addr::LOCALHOST, b)).is_ok()
                {
                    return Ok(port);
                }
            }
        }
    }
    Err(io::Error::other("no free loopback port"))
}

/// One RESP command over a fresh TCP connection; the reply as text.
pub(crate) fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&stream).write_all(req.as_bytes())?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        Some(("-", rest)) => Err(io::Error::other(rest.to_owned())),
        Some(("$", "-1")) => Ok(String::new()),
        Some(("$", len)) => {
            let len: usize = len.parse().map_err(io::Error::other)?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            String::from_utf8(body).map_err(io::Error::other)
        }
        _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
    }
}

/// A private `redis-server`, killed (by pid) when dropped.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// TLS only: `--port 0`, and TLS on `port`.
    tls: bool,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub(crate) fn start() -> io::Result<Self> {
        Self::start_with(&[])
    }

    /// A server with extra arguments (e.g. `--requirepass`).
    pub(crate) fn start_with(extra: &[&str]) -> io::Result<Self> {
        Self::start_node(extra, None, false)
    }

    /// A TLS-only server (no plain port) on a free port; `extra` must name
    /// its certificate files (`--tls-cert-file`, `--tls-key-file`,
    /// `--tls-ca-cert-file`, ...).
    pub(crate) fn start_tls(extra: &[&str]) -> io::Result<Self> {
        Self::start_node(extra, None, true)
    }

    fn start_node(extra: &[&str], bus: Option<u16>, tls: bool) -> io::Result<Self> {
        if find_program("redis-server").is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "redis-server is not on PATH",
            ));
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "token-redis-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port(bus)?;
            let mut server = Self {
                child: None,
                port,
                dir: dir.clone(),
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
                tls,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
            // Forget the dir so this attempt's drop does not remove it.
            server.dir = PathBuf::new();
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(io::Error::other(format!("redis-server exited: {status}")));
            }
            let probe = if self.tls {
                // Speaking TLS here is the client's job under test: that the
                // port accepts connections is enough.
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(|_| String::new())
            } else {
                command(self.port, &["PING"])
            };
            match probe {
                Ok(_) => return Ok(()),
                // Up, but wants a password: up all the same.
                Err(e) if e.to_string().contains("NOAUTH") => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    self.kill();
                    return Err(e);
                }
            }
        }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://...` for a TLS server.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and wait for it to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (with no data).
    pub(crate) fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let mut last = None;
        // The port can take a moment to be free again.
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| io::Error::other("restart failed")))
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub(crate) fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A private 3-master Redis Cluster.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start() -> io::Result<Self> {
        Self::start_nodes(&[], None)
    }

    /// TLS-only nodes (cluster bus over TLS too): `node_tls` names the
    /// nodes' certificate files (see [`RedisServer::start_tls`]), `cli_tls`
    /// is what `redis-cli` needs to reach them (`--tls --cacert ...`).
    pub(crate) fn start_tls(node_tls: &[&str], cli_tls: &[&str]) -> io::Result<Self> {
        Self::start_nodes(node_tls, Some(cli_tls))
    }

    /// `cli_tls`: `Some` for TLS-only nodes.
    fn start_nodes(extra: &[&str], cli_tls: Option<&[&str]>) -> io::Result<Self> {
        if find_program("redis-cli").is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "redis-cli is not on PATH",
            ));
        }
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        let tls = cli_tls.is_some();
        let cli_tls = cli_tls.unwrap_or_default();
        let mut args = args.to_vec();
        args.extend_from_slice(extra);
        if tls {
            args.extend_from_slice(&["--tls-cluster", "yes"]);
        }
        let nodes = (0..3)
            .map(|_| RedisServer::start_node(&args, Some(10_000), tls))
            .collect::<io::Result<Vec<_>>>()?;
        let out = Command::new("redis-cli")
            .args(cli_tls)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = |port: u16| -> io::Result<String> {
            if !tls {
                return command(port, &["CLUSTER", "INFO"]);
            }
            let out = Command::new("redis-cli")
                .args(cli_tls)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "CLUSTER",
                    "INFO",
                ])
                .stdin(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        while !nodes
            .iter()
            .all(|n| info(n.port).is_ok_and(|i| i.contains("cluster_state:ok")))
        {
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the cluster did not reach cluster_state:ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { nodes })
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A standalone server's URL: xtask's, or a private one (kept alive by the
/// returned guard). `None` when skipping.
pub(crate) fn standalone(what: &str) -> Option<(String, Option<RedisServer>)> {
    if let Ok(url) = std::env::var(REDIS_URL_ENV) {
        if !url.trim().is_empty() {
            return Some((url.trim().to_owned(), None));
        }
    }
    match RedisServer::start() {
        Ok(server) => Some((server.url(), Some(server))),
        Err(e) => unavailable(
            what,
            &format!(
                "{REDIS_URL_ENV} is not set and no private redis-server could be started: {e}"
            ),
        ),
    }
}

/// A cluster's node URLs: xtask's, or a private cluster.
pub(crate) fn cluster(what: &str) -> Option<(Vec<String>, Option<RedisCluster>)> {
    if let Ok(urls) = std::env::var(REDIS_CLUSTER_URLS_ENV) {
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !urls.is_empty() {
            return Some((urls, None));
        }
    }
    match RedisCluster::start() {
        Ok(cluster) => Some((cluster.urls(), Some(cluster))),
        Err(e) => unavailable(
            what,
            &format!(
                "{REDIS_CLUSTER_URLS_ENV} is not set and no private cluster could be started: {e}"
            ),
        ),
    }
}

/// A private standalone server (for tests that kill, pause or freeze it).
pub(crate) fn own_server(what: &str) -> Option<RedisServer> {
    match RedisServer::start() {
        Ok(server) => Some(server),
        Err(e) => unavailable(
            what,
            &format!("no private redis-server could be started: {e}"),
        ),
    }
}

/// A private TLS-only server (see [`RedisServer::start_tls`]).
pub(crate) fn own_tls_server(what: &str, extra: &[&str]) -> Option<RedisServer> {
    match RedisServer::start_tls(extra) {
        Ok(server) => Some(server),
        Err(e) => unavailable(
            what,
            &format!("no private TLS redis-server could be started: {e}"),
        ),
    }
}

/// A private TLS-only cluster (see [`RedisCluster::start_tls`]).
pub(crate) fn own_tls_cluster(
    what: &str,
    node_tls: &[&str],
    cli_tls: &[&str],
) -> Option<RedisCluster> {
    match RedisCluster::start_tls(node_tls, cli_tls) {
        Ok(cluster) => Some(cluster),
        Err(e) => unavailable(
            what,
            &format!("no private TLS cluster could be started: {e}"),
        ),
    }
}

/// A key prefix no other test uses.
pub(crate) fn fresh_prefix(label: &str) -> String {
    format!("test:{label}:{:x}:", token_core::backend::random_u128())
}

/// Raw access to a `RedisStore`'s stored bytes, through its documented
/// storage format (`<expires_at ms>:<payload>`).
pub(crate) struct Raw(pub(crate) RedisStore);

fn split(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let sep = value.iter().take(21).position(|&b| b == b':')?;
    let (head, rest) = value.split_at(sep);
    (!head.is_empty() && head.iter().all(u8::is_ascii_digit)).then(|| (head, &rest[1..]))
}

fn store_err(e: redis::RedisError) -> StoreError {
    StoreError::unavailable("raw access", e)
}

impl Raw {
    pub(crate) async fn get_value(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.0.connection();
        redis::cmd("GET")
            .arg(self.0.token_key(key))
            .query_async(&mut c)
            .await
            .map_err(store_err)
    }
}

#[async_trait]
impl token_conformance::RawAccess for Raw {
    async fn write_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), StoreError> {
        let header = match self.get_value(key).await? {
            Some(v) => split(&v).map(|(h, _)| h.to_vec()),
            None => None,
        };
        let header = header.unwrap_or_else(|| {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                + 3_600_000;
            ms.to_string().into_bytes()
        });
        let mut value = header;
        value.push(b':');
        value.extend_from_slice(bytes);
        let mut c = self.0.connection();
        redis::cmd("SET")
            .arg(self.0.token_key(key))
            .arg(value)
            .arg("PX")
            .arg(3_600_000)
            .query_async::<()>(&mut c)
            .await
            .map_err(store_err)
    }

    async fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_value(key)
            .await?
            .map(|v| split(&v).map_or(v.clone(), |(_, payload)| payload.to_vec())))
    }
}
