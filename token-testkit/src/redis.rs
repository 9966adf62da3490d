//! Redis for the tests: the servers `cargo xtask` started (env vars
//! `TOKEN_CACHE_REDIS_URL`, `TOKEN_CACHE_REDIS_CLUSTER_URLS`), or private
//! `redis-server` processes on free loopback ports, persistence off, in a
//! private temporary directory, killed when dropped. Never the system Redis
//! on 6379.
//!
//! xtask keeps its own starter (`xtask/src/redis.rs`): it is a program
//! that starts servers for a whole run, not a test.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ci::skip_or_fail;
use crate::ports::free_port_with_bus;

/// Env var with the URL of the standalone server `cargo xtask` started.
const REDIS_URL_ENV: &str = "TOKEN_CACHE_REDIS_URL";
/// Env var with the comma-separated node URLs of the cluster `cargo xtask`
/// started.
const REDIS_CLUSTER_URLS_ENV: &str = "TOKEN_CACHE_REDIS_CLUSTER_URLS";

/// What a skipped Redis test suggests.
const HOW: &str = "install redis-server, or run `cargo xtask test`";

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One RESP command to `127.0.0.1:port` over a fresh TCP connection; the
/// reply as text (an error reply is an `Err`). Enough for `PING`,
/// `CONFIG SET`, `CLIENT PAUSE`, `DBSIZE`, `CLUSTER INFO`...
pub fn redis_command(port: u16, args: &[&str]) -> io::Result<String> {
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

/// A private `redis-server` on a free loopback port, persistence off, in a
/// temporary directory of its own; killed (and its directory removed) when
/// dropped. It can be killed and restarted on the same port, frozen and
/// thawed.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// TLS only: `--port 0`, and TLS on `port`.
    tls: bool,
}

impl RedisServer {
    /// A standalone server.
    pub fn start() -> io::Result<Self> {
        Self::start_node(&[], None, false)
    }

    /// A TLS-only server (no plain port); `extra` names its certificate
    /// files (`--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`,
    /// ...).
    pub fn start_tls(extra: &[&str]) -> io::Result<Self> {
        Self::start_node(extra, None, true)
    }

    /// [`start`](Self::start), or `None` after
    /// [`skip_or_fail`](crate::skip_or_fail).
    ///
    /// # Panics
    ///
    /// Under CI, when no server can be started.
    pub fn private() -> Option<Self> {
        Self::start().map_or_else(
            |e| {
                skip_or_fail(format!(
                    "no private redis-server could be started: {e} ({HOW})"
                ))
            },
            Some,
        )
    }

    /// [`start_tls`](Self::start_tls), or `None` after
    /// [`skip_or_fail`](crate::skip_or_fail).
    ///
    /// # Panics
    ///
    /// Under CI, when no server can be started.
    pub fn private_tls(extra: &[&str]) -> Option<Self> {
        Self::start_tls(extra).map_or_else(
            |e| {
                skip_or_fail(format!(
                    "no private TLS redis-server could be started: {e} ({HOW})"
                ))
            },
            Some,
        )
    }

    fn start_node(extra: &[&str], bus: Option<u16>, tls: bool) -> io::Result<Self> {
        if find_program("redis-server").is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "redis-server is not on PATH",
            ));
        }
        let mut last = None;
        for _ in 0..3 {
            let mut server = Self {
                child: None,
                port: free_port_with_bus(bus)?,
                dir: tempfile::Builder::new()
                    .prefix("token-redis-test-")
                    .tempdir()?,
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
                tls,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
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
            .arg(self.dir.path())
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
                // Speaking TLS is the job of the client under test: that the
                // port accepts connections is enough.
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(|_| String::new())
            } else {
                redis_command(self.port, &["PING"])
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

    /// The port it listens on (its TLS port for a TLS-only server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://...` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// [`redis_command`] to this server (not for TLS-only servers).
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        redis_command(self.port, args)
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with no data.
    pub fn restart(&mut self) -> io::Result<()> {
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
        if let Some(pid) = self.child.as_ref().map(Child::id) {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing
    /// answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// A private 3-master Redis Cluster of [`RedisServer`]s.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and joins them (needs `redis-cli`).
    pub fn start() -> io::Result<Self> {
        Self::start_nodes(&[], None)
    }

    /// TLS-only nodes (cluster bus over TLS too): `node_tls` names the
    /// nodes' certificate files (see [`RedisServer::start_tls`]), `cli_tls`
    /// is what `redis-cli` needs to reach them (`--tls --cacert ...`).
    pub fn start_tls(node_tls: &[&str], cli_tls: &[&str]) -> io::Result<Self> {
        Self::start_nodes(node_tls, Some(cli_tls))
    }

    /// [`start_tls`](Self::start_tls), or `None` after
    /// [`skip_or_fail`](crate::skip_or_fail).
    ///
    /// # Panics
    ///
    /// Under CI, when no cluster can be started.
    pub fn private_tls(node_tls: &[&str], cli_tls: &[&str]) -> Option<Self> {
        Self::start_tls(node_tls, cli_tls).map_or_else(
            |e| {
                skip_or_fail(format!(
                    "no private TLS cluster could be started: {e} ({HOW})"
                ))
            },
            Some,
        )
    }

    fn start_nodes(extra: &[&str], cli_tls: Option<&[&str]>) -> io::Result<Self> {
        if find_program("redis-cli").is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "redis-cli is not on PATH",
            ));
        }
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        let tls = cli_tls.is_some();
        let cli_tls = cli_tls.unwrap_or_default();
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
                return redis_command(port, &["CLUSTER", "INFO"]);
            }
            let out = Command::new("redis-cli")
                .args(cli_tls)
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["CLUSTER", "INFO"])
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

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes' ports (to ask each for its `INFO`).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }
}

/// A standalone server's URL: xtask's (`TOKEN_CACHE_REDIS_URL`), or a private
/// server's, kept alive by the returned guard. `None` after
/// [`skip_or_fail`](crate::skip_or_fail) when there is neither.
///
/// # Panics
///
/// Under CI, when there is no server.
pub fn redis_standalone() -> Option<(String, Option<RedisServer>)> {
    if let Ok(url) = std::env::var(REDIS_URL_ENV) {
        if !url.trim().is_empty() {
            return Some((url.trim().to_owned(), None));
        }
    }
    match RedisServer::start() {
        Ok(server) => Some((server.url(), Some(server))),
        Err(e) => skip_or_fail(format!(
            "{REDIS_URL_ENV} is not set and no private redis-server could be started: {e} ({HOW})"
        )),
    }
}

/// A cluster's node URLs: xtask's
/// (`TOKEN_CACHE_REDIS_CLUSTER_URLS`), or a
/// private cluster's, kept alive by the returned guard. `None` after
/// [`skip_or_fail`](crate::skip_or_fail) when there is neither.
///
/// # Panics
///
/// Under CI, when there is no cluster.
pub fn redis_cluster() -> Option<(Vec<String>, Option<RedisCluster>)> {
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
        Err(e) => skip_or_fail(format!(
            "{REDIS_CLUSTER_URLS_ENV} is not set and no private cluster could be started: {e} ({HOW})"
        )),
    }
}
