#!/usr/bin/env bash
# Throughput of `tokencache serve` measured from outside the process with wrk
# (a C load generator, far cheaper per request than the in-process hyper
# client of benches/benches/gateway.rs), all on loopback:
#
#   direct:         wrk -> upstream                (the upstream alone)
#   plain proxy:    wrk -> plain proxy -> upstream (hyper + hyper-util's pooled
#                   client, no token work: benches/examples/plain_proxy.rs)
#   gateway:        wrk -> gateway -> upstream     (route, token, Authorization)
#   token endpoint: wrk -> gateway /v1/token       (Metadata: true)
#
# The upstream is a second `tokencache serve` answering /healthz (hyper, one
# small response), so no other server is needed. Both sidecars take their
# token from a one-file Python token endpoint at start-up and keep it warm; no
# request of the run reaches it.
#
#   cargo build --release -p token-cli -p benches --example plain_proxy
#   token-cli/bench/gateway-wrk.sh target/release/tokencache target/release/examples/plain_proxy
#
# Needs wrk (`apt-get install -y wrk`) and python3. DURATION (default 10s),
# CONNECTIONS (64) and THREADS (1) tune wrk; ROUNDS (default 3) repeats the
# proxy and gateway rows alternately, so that both see the same machine.
# BASELINE=path/to/another/tokencache adds a second gateway from that binary
# (e.g. a build of the previous commit), its rows alternated with the others.
# Prints requests/s and wrk's p50 for each row, then the medians, and the
# CPU time each process spent per request (from /proc: less disturbed than
# requests/s by a noisy machine).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 TOKENCACHE_BINARY PLAIN_PROXY_BINARY" >&2; exit 2; }
bin=$1 proxy_bin=$2
command -v wrk >/dev/null || { echo "$0: needs wrk: apt-get install -y wrk" >&2; exit 2; }
DURATION=${DURATION:-10s} CONNECTIONS=${CONNECTIONS:-64} THREADS=${THREADS:-1} ROUNDS=${ROUNDS:-3}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT INT TERM
python3 "$(dirname "$0")/idp.py" > "$work/idp.port" & pids+=($!)
while [ ! -s "$work/idp.port" ]; do sleep 0.05; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port); px=$(free_port); base=$(free_port)
profile() {
  cat <<TOML
[profiles.bench]
token_url = "http://127.0.0.1:$(cat "$work/idp.port")/token"
client_id = "bench"
client_secret_env = "BENCH_SECRET"
scopes = ["a"]
store = "memory"
TOML
}
{ profile; printf '\n[serve]\nlisten = "127.0.0.1:%s"\n' "$up"; } > "$work/upstream.toml"
{ profile; printf '\n[serve]\nlisten = "127.0.0.1:%s"\n\n[[serve.routes]]\nprefix = "/up/"\nupstream = "http://127.0.0.1:%s"\nprofile = "bench"\n' "$gw" "$up"; } > "$work/gateway.toml"
export BENCH_SECRET=bench-secret HOME="$work/home" XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config"
"$bin" serve --config "$work/upstream.toml" 2> "$work/upstream.log" & pids+=($!)
"$bin" serve --config "$work/gateway.toml" 2> "$work/gateway.log" & gw_pid=$!; pids+=($gw_pid)
if [ -n "${BASELINE:-}" ]; then
  sed "s/127.0.0.1:$gw/127.0.0.1:$base/" "$work/gateway.toml" > "$work/baseline.toml"
  "$BASELINE" serve --config "$work/baseline.toml" 2> "$work/baseline.log" & base_pid=$!; pids+=($base_pid)
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$base/readyz" >/dev/null && break; sleep 0.05; done
fi
"$proxy_bin" "127.0.0.1:$px" /up/ "http://127.0.0.1:$up" > "$work/proxy.log" 2>&1 & px_pid=$!; pids+=($px_pid)
for port in "$up" "$gw"; do
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
done
curl -fs "http://127.0.0.1:$gw/up/healthz" >/dev/null || { echo "$0: the gateway does not forward; logs in $work" >&2; cat "$work/gateway.log" >&2; exit 1; }
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$px/up/healthz" >/dev/null && break; sleep 0.05; done
curl -fs "http://127.0.0.1:$px/up/healthz" >/dev/null || { echo "$0: the plain proxy does not forward" >&2; cat "$work/proxy.log" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# run NAME PID URL [wrk args]: one wrk run; appends "NAME rps cpu-ticks" to rows.
run() {
  local name=$1 pid=$2 url=$3; shift 3
  local before out rps; before=$(ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  echo "$name $rps $(( $(ticks "$pid") - before ))" >> "$work/rows"
  printf '%-16s %s req/s, p50 %s %s\n' "$name" "$rps" "$(awk '/ 50%/ {print $2}' <<<"$out")" "$(grep Non-2xx <<<"$out" || true)"
}
up_pid=${pids[1]}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run direct "$up_pid" "http://127.0.0.1:$up/healthz"
for _ in $(seq "$ROUNDS"); do
  run "plain proxy" "$px_pid" "http://127.0.0.1:$px/up/healthz"
  run gateway "$gw_pid" "http://127.0.0.1:$gw/up/healthz"
  if [ -n "${BASELINE:-}" ]; then run "baseline gateway" "$base_pid" "http://127.0.0.1:$base/up/healthz"; fi
done
run "token endpoint" "$gw_pid" "http://127.0.0.1:$gw/v1/token?profile=bench" -H 'Metadata: true'
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/rows" "${DURATION%s}" "$(getconf CLK_TCK)" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, ticks = line.rsplit(" ", 2)
    rows[name].append((float(rps), int(ticks)))
seconds, hz = float(sys.argv[2]), float(sys.argv[3])
for name, runs in rows.items():
    rps = statistics.median(r for r, _ in runs)
    cpu = statistics.median(t / hz / (r * seconds) * 1e6 for r, t in runs)
    print(f"median {name:15} {rps:8.0f} req/s   {cpu:5.1f} us CPU per request in that process")
PY
