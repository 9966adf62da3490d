#!/usr/bin/env python3
"""Two figures of `tokencache serve` under a faulty world, for each binary given:

- the memory an unfinished 60 KB request head holds (100 connections that
  never finish their heads; RSS before and after, per connection);
- how long after start `/healthz` first answers when every profile's IdP
  hangs (3 profiles on a token endpoint that accepts and never answers).

    cargo build -p token-cli
    token-cli/bench/serve-limits.py target/debug/tokencache [OTHER_BINARY...]

Everything runs on loopback, bounded: 100 connections, at most 60 s.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def start(binary, config, work):
    env = dict(os.environ, LIMITS_SECRET="s", HOME=work,
               XDG_CACHE_HOME=f"{work}/cache", XDG_CONFIG_HOME=f"{work}/config")
    p = subprocess.Popen([binary, "serve", "--config", config], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return p


def profile(name, url):
    return (f'[profiles.{name}]\ntoken_url = "{url}"\nclient_id = "{name}"\n'
            'client_secret_env = "LIMITS_SECRET"\nstore = "memory"\n\n')


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def unfinished_heads(binary, work):
    config = f"{work}/heads.toml"
    with open(config, "w") as f:
        f.write(profile("p", "http://127.0.0.1:9/token"))
        f.write('[serve]\nlisten = "127.0.0.1:0"\n')
    p = start(binary, config, work)
    addr = p.stdout.readline().decode().strip().removeprefix("listening on http://")
    host, port = addr.rsplit(":", 1)
    time.sleep(1)
    before = rss_kib(p.pid)
    head = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (60 * 1024)
    socks = []
    for _ in range(100):
        s = socket.create_connection((host, int(port)))
        s.sendall(head)
        socks.append(s)
    time.sleep(2)
    after = rss_kib(p.pid)
    p.kill()
    p.wait()
    for s in socks:
        s.close()
    print(f"  100 unfinished 60 KB heads: RSS {before} -> {after} KiB, "
          f"{(after - before) / 100:.0f} KiB per connection")


def healthz_with_a_hanging_idp(binary, work):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []

    def accept():
        while True:
            c, _ = srv.accept()
            held.append(c)

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/token"
    config = f"{work}/hang.toml"
    with open(config, "w") as f:
        f.write("".join(profile(f"p{i}", url) for i in range(3)))
        # A fixed free port: the old binaries print their address only
        # after the prefetch, which is what this measures.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        f.write(f'[serve]\nlisten = "127.0.0.1:{port}"\n')
    started = time.time()
    p = start(binary, config, work)
    answered = None
    while time.time() - started < 60:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            answered = time.time() - started
            break
        except OSError:
            time.sleep(0.05)
    p.kill()
    p.wait()
    srv.close()
    if answered is None:
        print("  /healthz did not answer within 60 s (3 profiles on a hanging IdP)")
    else:
        print(f"  /healthz first answered {answered:.2f} s after start "
              "(3 profiles on a hanging IdP)")


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: serve-limits.py TOKENCACHE_BINARY...")
    for binary in sys.argv[1:]:
        print(binary)
        with tempfile.TemporaryDirectory() as work:
            unfinished_heads(binary, work)
            healthz_with_a_hanging_idp(binary, work)


if __name__ == "__main__":
    main()
