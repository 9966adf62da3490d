#!/usr/bin/env python3
"""The forward proxy's cost, measured from outside `tokencache serve` on loopback.

Rows (one client, one request at a time, keep-alive, N requests each):

  gateway (prefix route)   GET /up/healthz                       origin form, as before
  HTTP_PROXY (host route)  GET http://bench.internal/healthz     absolute form, routed by host
  CONNECT tunnel (TLS h1)  CONNECT bench.internal:443, then TLS (leaf from the local CA) and
                           N requests in that one tunnel
  CONNECT per request      a new CONNECT + TLS handshake + one request, M times

The upstream is a second `tokencache serve` answering /healthz; both take their token from
idp.py at start-up. For each row: requests/s, the client-measured p50 and p99 (Python's own
overhead included, the same in every row), and the CPU time the gateway process spent per
request (from /proc, less disturbed than latency by a noisy machine).

    cargo build --release -p token-cli
    token-cli/bench/proxy-connect.py target/release/tokencache

Needs python3 only (standard library). N (default 20000) and M (default 2000) set the counts.
"""
import http.client, os, socket, ssl, statistics, subprocess, sys, tempfile, time

if len(sys.argv) != 2:
    sys.exit(f"usage: {sys.argv[0]} TOKENCACHE_BINARY")
binary = sys.argv[1]
N = int(os.environ.get("N", "20000"))
M = int(os.environ.get("M", "2000"))
here = os.path.dirname(os.path.abspath(__file__))
work = tempfile.mkdtemp()
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_ready(port):
    for _ in range(400):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"the sidecar on {port} never became ready; logs in {work}")


try:
    idp = subprocess.Popen([sys.executable, os.path.join(here, "idp.py")], stdout=subprocess.PIPE, text=True)
    procs.append(idp)
    idp_port = int(idp.stdout.readline())
    profile = f"""[profiles.bench]
token_url = "http://127.0.0.1:{idp_port}/token"
client_id = "bench"
client_secret_env = "BENCH_SECRET"
scopes = ["a"]
store = "memory"
"""
    up, gw = free_port(), free_port()
    ca, ca_key = os.path.join(work, "proxy-ca.pem"), os.path.join(work, "proxy-ca.key")
    with open(os.path.join(work, "upstream.toml"), "w") as f:
        f.write(profile + f'\n[serve]\nlisten = "127.0.0.1:{up}"\n')
    with open(os.path.join(work, "gateway.toml"), "w") as f:
        f.write(profile + f"""
[serve]
listen = "127.0.0.1:{gw}"

[[serve.routes]]
prefix = "/up/"
upstream = "http://127.0.0.1:{up}"
profile = "bench"

[[serve.routes]]
host = "bench.internal"
upstream = "http://127.0.0.1:{up}"
profile = "bench"

[serve.proxy]
ca_cert_file = "{ca}"
ca_key_file = "{ca_key}"
""")
    env = dict(os.environ, BENCH_SECRET="bench-secret", HOME=os.path.join(work, "home"),
               XDG_CACHE_HOME=os.path.join(work, "cache"), XDG_CONFIG_HOME=os.path.join(work, "config"))
    for name in ("upstream", "gateway"):
        log = open(os.path.join(work, f"{name}.log"), "w")
        procs.append(subprocess.Popen([binary, "serve", "--config", os.path.join(work, f"{name}.toml")],
                                      stdout=subprocess.DEVNULL, stderr=log, env=env))
    wait_ready(up)
    wait_ready(gw)
    gw_pid = procs[-1].pid
    hz = os.sysconf("SC_CLK_TCK")
    tls = ssl.create_default_context(cafile=ca)

    def tunnel():
        # Through the proxy: connect to the sidecar, CONNECT, then TLS.
        c = http.client.HTTPSConnection("127.0.0.1", gw, context=tls, timeout=10)
        c.set_tunnel("bench.internal", 443)
        return c

    def rows():
        yield "gateway (prefix route)", lambda: http.client.HTTPConnection("127.0.0.1", gw, timeout=10), "/up/healthz", {}, N, False
        yield "HTTP_PROXY (host route)", lambda: http.client.HTTPConnection("127.0.0.1", gw, timeout=10), "http://bench.internal/healthz", {"Host": "bench.internal"}, N, False
        yield "CONNECT tunnel (TLS h1)", tunnel, "/healthz", {}, N, False
        yield "CONNECT per request", tunnel, "/healthz", {}, M, True

    print(f"load before: {open('/proc/loadavg').read().split()[:3]}")
    for name, make, path, headers, count, fresh in rows():
        conn = make()
        conn.request("GET", path, headers=headers)  # warm: connection, leaf certificate
        r = conn.getresponse(); r.read()
        assert r.status == 200, (name, r.status)
        if fresh:
            conn.close()
        lat = []
        before, start = cpu_ticks(gw_pid), time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            if fresh:
                conn = make()
            conn.request("GET", path, headers=headers)
            r = conn.getresponse(); r.read()
            if r.status != 200:
                sys.exit(f"{name}: status {r.status}")
            if fresh:
                conn.close()
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        cpu = (cpu_ticks(gw_pid) - before) / hz / count * 1e6
        lat.sort()
        print(f"{name:24} {count / elapsed:8.0f} req/s   p50 {lat[len(lat) // 2] * 1e6:7.1f} us   "
              f"p99 {lat[int(len(lat) * 0.99)] * 1e6:7.1f} us   {cpu:6.1f} us gateway CPU per request")
        conn.close()
    print(f"load after:  {open('/proc/loadavg').read().split()[:3]}")
finally:
    for p in procs:
        p.terminate()
