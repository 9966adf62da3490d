#!/usr/bin/env bash
# What one `tokencache serve` costs, for the resource requests in deploy/kubernetes
# (results in docs/DEPLOY.md, "Resources"): a release build with 5 profiles and 5
# routes, idle and then under wrk, all on loopback. The IdP is the one-file Python
# token endpoint of token-cli/bench (tokens live 10 h, so no request of the run calls
# it); the upstream is a second `tokencache serve` answering /healthz.
#
#   cargo build --release -p token-cli --bin tokencache
#   deploy/measure-resources.sh target/release/tokencache
#
# Prints RSS (VmRSS, and VmHWM: the peak) after start, after IDLE seconds, after the
# gateway load and after the token-endpoint load, the CPU used while idle, and the CPU
# per request under load (from /proc/PID/stat). Needs wrk (`apt-get install -y wrk`),
# python3 and curl. DURATION (wrk, default 15s), CONNECTIONS (64) and IDLE (10) tune it;
# about 45 s in all.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 TOKENCACHE_BINARY" >&2; exit 2; }
bin=$1
for p in wrk python3 curl; do
  command -v "$p" >/dev/null || { echo "$0: needs $p (apt-get install -y $p)" >&2; exit 2; }
done
DURATION=${DURATION:-15s} CONNECTIONS=${CONNECTIONS:-64} IDLE=${IDLE:-10}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT INT TERM
here=$(cd "$(dirname "$0")" && pwd)
python3 "$here/../token-cli/bench/idp.py" > "$work/idp.port" & pids+=($!)
while [ ! -s "$work/idp.port" ]; do sleep 0.05; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port)
idp="http://127.0.0.1:$(cat "$work/idp.port")/token"
{
  printf '[profiles.upstream]\ntoken_url = "%s"\nclient_id = "up"\nclient_secret_env = "BENCH_SECRET"\nstore = "memory"\n' "$idp"
  printf '\n[serve]\nlisten = "127.0.0.1:%s"\n' "$up"
} > "$work/upstream.toml"
{
  for n in 1 2 3 4 5; do
    printf '[profiles.p%s]\ntoken_url = "%s"\nclient_id = "client-%s"\nclient_secret_env = "BENCH_SECRET"\nscopes = ["api.%s"]\nstore = "memory"\n\n' "$n" "$idp" "$n" "$n"
  done
  printf '[serve]\nlisten = "127.0.0.1:%s"\n' "$gw"
  for n in 1 2 3 4 5; do
    printf '\n[[serve.routes]]\nprefix = "/r%s/"\nupstream = "http://127.0.0.1:%s"\nprofile = "p%s"\n' "$n" "$up" "$n"
  done
} > "$work/gateway.toml"
export BENCH_SECRET=bench-secret HOME="$work/home" XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config"
"$bin" serve --config "$work/upstream.toml" > /dev/null 2> "$work/upstream.log" & pids+=($!)
"$bin" serve --config "$work/gateway.toml" > /dev/null 2> "$work/gateway.log" & pid=$!; pids+=($pid)
for port in "$up" "$gw"; do
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
done
curl -fs "http://127.0.0.1:$gw/r3/healthz" >/dev/null || { echo "$0: the gateway does not forward" >&2; cat "$work/gateway.log" >&2; exit 1; }
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
mem() { awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "RSS %.1f MiB (peak %.1f MiB)", r/1024, h/1024}' "/proc/$pid/status"; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "started, 5 profiles with tokens: $(mem)"
t0=$(ticks); sleep "$IDLE"; t1=$(ticks)
echo "idle ${IDLE}s: $(mem), CPU $(python3 -c "print(f'{($t1-$t0)/$hz/$IDLE*1000:.2f}')") millicores"
# load NAME URL [wrk args]
load() {
  local name=$1 url=$2; shift 2
  local before out rps after
  before=$(ticks)
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
  after=$(ticks)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  python3 - "$name" "$rps" "$((after - before))" "$hz" "${DURATION%s}" "$(mem)" <<'PY'
import sys
name, rps, ticks, hz, secs, mem = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
cpu = ticks / hz / secs
print(f"{name}: {rps:.0f} req/s, serve used {cpu*1000:.0f} millicores = {cpu / rps * 1e6:.1f} us CPU per request; {mem}")
PY
  grep -q "Non-2xx" <<<"$out" && { echo "$0: non-2xx answers in $name:" >&2; echo "$out" >&2; exit 1; }
  return 0
}
load "gateway, ${CONNECTIONS} connections" "http://127.0.0.1:$gw/r3/healthz"
load "token endpoint, ${CONNECTIONS} connections" "http://127.0.0.1:$gw/v1/token?profile=p2" -H 'Metadata: true'
t0=$(ticks); sleep 3; t1=$(ticks)
echo "idle again 3s: $(mem), CPU $(python3 -c "print(f'{($t1-$t0)/$hz/3*1000:.2f}')") millicores"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
