//! Private Redis servers for tests: a standalone server or a 3-master
//! cluster, started from the `redis-server` binary on free loopback ports
//! with persistence off in a temp dir, and stopped (killed by pid) when their
//! guard is dropped, also when a test fails or xtask returns early.
//!
//! `cargo xtask redis --check` exercises all of it.

use std::env;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, Result};

/// The env var a standalone-Redis test reads its server URL from.
pub(crate) const REDIS_URL_ENV: &str = "TOKEN_CACHE_REDIS_URL";
/// The env var a Redis Cluster test reads its comma-separated node URLs from.
pub(crate) const REDIS_CLUSTER_URLS_ENV: &str = "TOKEN_CACHE_REDIS_CLUSTER_URLS";

/// The system Redis' port (and its cluster bus port): never ours to use.
const RESERVED_PORTS: [u16; 2] = [6379, 16379];
/// A cluster node also listens on its port plus this (the cluster bus).
const CLUSTER_BUS_OFFSET: u16 = 10_000;
const CLUSTER_MASTERS: usize = 3;
const START_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The command that installs what this module needs, for error messages.
const INSTALL_HINT: &str =
    "sudo apt-get update && sudo apt-get install -y redis-server redis-tools";

/// Which kind of deployment a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One server.
    Standalone,
    /// Three masters, no replicas, all 16384 slots assigned.
    Cluster,
}

impl Topology {
    /// What the summary calls it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Standalone => "standalone redis-server",
            Self::Cluster => "3-master Redis Cluster",
        }
    }

    /// Starts a deployment of this kind.
    pub(crate) fn start(self, tools: &Tools) -> Result<Deployment> {
        match self {
            Self::Standalone => start_standalone(tools),
            Self::Cluster => start_cluster(tools),
        }
    }
}

/// `redis-server` and `redis-cli`, found on `PATH`.
#[derive(Debug)]
pub(crate) struct Tools {
    server: PathBuf,
    cli: PathBuf,
}

impl Tools {
    fn find() -> Option<Self> {
        Some(Self {
            server: util::find_program("redis-server")?,
            cli: util::find_program("redis-cli")?,
        })
    }

    /// Finds `redis-server` and `redis-cli`. When they are missing and we run
    /// as root with `apt-get`, installs them; otherwise fails with the command
    /// that installs them.
    pub(crate) fn ensure() -> Result<Self> {
        if let Some(tools) = Self::find() {
            return Ok(tools);
        }
        if !(util::is_root() && util::find_program("apt-get").is_some()) {
            return Err(format!(
                "`redis-server` and `redis-cli` are needed but are not both on PATH. Install them with:\n    \
                 {INSTALL_HINT}\n(macOS: `brew install redis`)"
            )
            .into());
        }
        println!(
            "redis-server/redis-cli not found; installing them with apt-get (running as root)"
        );
        util::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "redis-server", "redis-tools"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        Self::find().ok_or_else(|| {
            "apt-get installed redis-server and redis-tools, but `redis-server` or `redis-cli` is still not on PATH"
                .into()
        })
    }
}

/// A running standalone server or cluster. Dropping it stops every process
/// and removes its temp dir.
#[derive(Debug)]
pub(crate) struct Deployment {
    topology: Topology,
    // Declared before `dir`: the servers stop before their files are removed.
    servers: Vec<Server>,
    dir: TempDir,
}

impl Deployment {
    /// Standalone or cluster.
    pub(crate) fn topology(&self) -> Topology {
        self.topology
    }

    /// `redis://127.0.0.1:<port>` for each server.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The env var, and its value, that tells a test where this deployment is.
    pub(crate) fn env(&self) -> (&'static str, String) {
        match self.topology {
            Topology::Standalone => (REDIS_URL_ENV, self.urls().join(",")),
            Topology::Cluster => (REDIS_CLUSTER_URLS_ENV, self.urls().join(",")),
        }
    }

    fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }
}

fn start_standalone(tools: &Tools) -> Result<Deployment> {
    let dir = TempDir::new("standalone")?;
    let server = Server::start_on_free_port(tools, dir.path(), &[], None)?;
    Ok(Deployment {
        topology: Topology::Standalone,
        servers: vec![server],
        dir,
    })
}

fn start_cluster(tools: &Tools) -> Result<Deployment> {
    let dir = TempDir::new("cluster")?;
    let mut servers = Vec::with_capacity(CLUSTER_MASTERS);
    for i in 0..CLUSTER_MASTERS {
        let node_dir = dir.path().join(format!("node-{i}"));
        fs::create_dir_all(&node_dir)
            .map_err(|e| format!("cannot create {}: {e}", node_dir.display()))?;
        let node_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        servers.push(Server::start_on_free_port(
            tools,
            &node_dir,
            &node_args,
            Some(CLUSTER_BUS_OFFSET),
        )?);
    }
    let deployment = Deployment {
        topology: Topology::Cluster,
        servers,
        dir,
    };
    let mut create = Command::new(&tools.cli);
    create.arg("--cluster").arg("create");
    create.args(deployment.ports().iter().map(|p| format!("127.0.0.1:{p}")));
    create.args(["--cluster-replicas", "0", "--cluster-yes"]);
    util::output(&mut create)?;
    wait_for_cluster(&deployment.ports())?;
    Ok(deployment)
}

/// Waits until every node reports `cluster_state:ok`.
fn wait_for_cluster(ports: &[u16]) -> Result {
    let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
    let mut last = String::new();
    loop {
        let mut all_ok = true;
        for &port in ports {
            match command(port, &["CLUSTER", "INFO"]) {
                Ok(info) if info.lines().any(|l| l.trim() == "cluster_state:ok") => {}
                Ok(info) => {
                    all_ok = false;
                    last = format!("node 127.0.0.1:{port} says:\n{info}");
                }
                Err(e) => {
                    all_ok = false;
                    last = format!("node 127.0.0.1:{port}: {e}");
                }
            }
        }
        if all_ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the Redis Cluster did not reach cluster_state:ok within {}s; {last}",
                CLUSTER_READY_TIMEOUT.as_secs()
            )
            .into());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// One `redis-server` process, killed when dropped.
#[derive(Debug)]
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts a server on a free port; retries on a fresh port when another
    /// process took the port between our check and the server's bind.
    fn start_on_free_port(
        tools: &Tools,
        dir: &Path,
        extra: &[&str],
        bus_offset: Option<u16>,
    ) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port =
                free_port(bus_offset).map_err(|e| format!("cannot find a free port: {e}"))?;
            match Self::start(tools, dir, port, extra) {
                Ok(server) => return Ok(server),
                Err(e) => {
                    println!("redis-server on port {port} did not come up: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| "redis-server did not start".into()))
    }

    fn start(tools: &Tools, dir: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        let log = dir.join("redis.log");
        // A log left by an earlier attempt would confuse the error message.
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new(&tools.server);
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        println!("$ {}", util::display(&cmd));
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", tools.server.display()))?;
        // From here on, dropping `server` kills the process.
        let mut server = Self { child, port };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server exited ({status}); {}", log_tail(&log)).into());
            }
            if command(port, &["PING"]).is_ok_and(|reply| reply == "PONG") {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer PING within {}s; {}",
                    READY_TIMEOUT.as_secs(),
                    log_tail(&log)
                )
                .into());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Kill by pid (SIGKILL): the data is throwaway, and nothing can stop it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            format!("last lines of {}:\n{tail}", log.display())
        }
        Err(_) => format!("no log at {}", log.display()),
    }
}

/// A free loopback port that is not the system Redis' port. With
/// `bus_offset`, `port + bus_offset` is free too (a cluster node's bus).
///
/// The port is free when this returns; a server started on it right away
/// almost always gets it, and callers retry when it does not.
pub(crate) fn free_port(bus_offset: Option<u16>) -> io::Result<u16> {
    const ATTEMPTS: usize = 200;
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if RESERVED_PORTS.contains(&port) {
            continue;
        }
        let Some(offset) = bus_offset else {
            return Ok(port);
        };
        let Some(bus) = port.checked_add(offset) else {
            continue;
        };
        if !RESERVED_PORTS.contains(&bus) && TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other(format!(
        "no free loopback port found in {ATTEMPTS} attempts"
    )))
}

/// Sends one command in RESP and returns a simple-string, integer or bulk
/// reply as text (a null bulk reply as ""); an error reply is an `Err`.
fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream).write_all(request.as_bytes())?;

    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply {line:?}"),
        )
    };
    let (kind, rest) = line.split_at_checked(1).ok_or_else(invalid)?;
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(format!(
            "redis replied with an error: {rest}"
        ))),
        "$" if rest.starts_with('-') => Ok(String::new()),
        "$" => {
            let len: usize = rest.parse().map_err(|_| invalid())?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            String::from_utf8(body).map_err(|_| invalid())
        }
        _ => Err(invalid()),
    }
}

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = env::temp_dir().join(format!(
            "token-cache-xtask-redis-{}-{n}-{label}",
            std::process::id()
        ));
        // Left over from a crashed run that had the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `cargo xtask redis --check`: starts both topologies, checks that they
/// answer, stops them and checks that they are gone.
pub(crate) fn check() -> Result {
    let tools = Tools::ensure()?;
    let version = util::output(Command::new(&tools.server).arg("--version"))?;
    println!("{}", version.trim());

    let standalone = util::step("start a standalone redis-server", || {
        Topology::Standalone.start(&tools)
    })?;
    let url = &standalone.urls()[0];
    let port = standalone.ports()[0];
    let roundtrip = command(port, &["SET", "xtask:check", "ok"])
        .and_then(|_| command(port, &["GET", "xtask:check"]))
        .map_err(|e| format!("standalone server at {url}: {e}"))?;
    if roundtrip != "ok" {
        return Err(format!("standalone server at {url}: GET returned {roundtrip:?}").into());
    }
    println!("standalone: {url} answers PING and a SET/GET round trip");

    let cluster = util::step("start a 3-master Redis Cluster", || {
        Topology::Cluster.start(&tools)
    })?;
    for port in cluster.ports() {
        let pong = command(port, &["PING"]).map_err(|e| format!("cluster node {port}: {e}"))?;
        let info =
            command(port, &["CLUSTER", "INFO"]).map_err(|e| format!("cluster node {port}: {e}"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or("?")
                .to_owned()
        };
        println!(
            "cluster node 127.0.0.1:{port}: PING -> {pong}, cluster_state:{}, cluster_known_nodes:{}, cluster_slots_assigned:{}",
            field("cluster_state"),
            field("cluster_known_nodes"),
            field("cluster_slots_assigned"),
        );
    }
    let (name, value) = cluster.env();
    println!("a test would get {name}={value}");

    let ports: Vec<u16> = standalone
        .ports()
        .into_iter()
        .chain(cluster.ports())
        .collect();
    let dirs = [
        standalone.dir.path().to_owned(),
        cluster.dir.path().to_owned(),
    ];
    drop(standalone);
    drop(cluster);
    for port in &ports {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Err(format!(
                "port {port} still accepts connections after the servers were stopped"
            )
            .into());
        }
    }
    if let Some(dir) = dirs.iter().find(|d| d.exists()) {
        return Err(format!("{} was not removed", dir.display()).into());
    }
    println!(
        "\nredis check passed: started and stopped {} redis-server processes (ports {}), temp dirs removed",
        ports.len(),
        ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_never_the_system_redis_port() {
        for _ in 0..20 {
            let port = free_port(None).unwrap();
            assert_ne!(port, 0);
            assert!(!RESERVED_PORTS.contains(&port));
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn free_port_with_bus_offset_leaves_the_bus_port_free_too() {
        for _ in 0..20 {
            let port = free_port(Some(CLUSTER_BUS_OFFSET)).unwrap();
            let bus = port.checked_add(CLUSTER_BUS_OFFSET).unwrap();
            assert!(!RESERVED_PORTS.contains(&port) && !RESERVED_PORTS.contains(&bus));
            let _a = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
            let _b = TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).unwrap();
        }
    }

    #[test]
    fn free_port_skips_ports_in_use() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let held_port = held.local_addr().unwrap().port();
        for _ in 0..20 {
            assert_ne!(free_port(None).unwrap(), held_port);
        }
    }

    #[test]
    fn command_speaks_enough_resp() {
        // A one-shot fake server answering with each reply kind in turn.
        let replies: [&[u8]; 4] = [
            b"+PONG\r\n",
            b"$5\r\nab\ncd\r\n",
            b"$-1\r\n",
            b"-ERR nope\r\n",
        ];
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let mut requests = Vec::new();
            for reply in replies {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0; 256];
                let n = conn.read(&mut buf).unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                conn.write_all(reply).unwrap();
            }
            requests
        });
        assert_eq!(command(port, &["PING"]).unwrap(), "PONG");
        assert_eq!(command(port, &["GET", "k"]).unwrap(), "ab\ncd");
        assert_eq!(command(port, &["GET", "missing"]).unwrap(), "");
        assert!(command(port, &["BOOM"])
            .unwrap_err()
            .to_string()
            .contains("ERR nope"));
        let requests = server.join().unwrap();
        assert_eq!(requests[0], "*1\r\n$4\r\nPING\r\n");
        assert_eq!(requests[1], "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
