#!/usr/bin/env bash
# Throughput of `tokencache serve` measured from outside the process with wrk
# (a C load generator, far cheaper per request than the in-process hyper
# client of benches/benches/gateway.rs), all on loopback:
#
#   direct:         wrk -> upstream            (the upstream alone)
#   gateway:        wrk -> gateway -> upstream (route, token, Authorization)
#   token endpoint: wrk -> gateway /v1/token   (Metadata: true)
#
# The upstream is a second `tokencache serve` answering /healthz (hyper, one
# small response), so no other server is needed. Both sidecars take their
# token from a one-file Python token endpoint at start-up and keep it warm; no
# request of the run reaches it.
#
#   cargo build --release -p token-cli
#   token-cli/bench/gateway-wrk.sh target/release/tokencache
#
# Needs wrk (`apt-get install -y wrk`) and python3. DURATION (default 10s),
# CONNECTIONS (64) and THREADS (1) tune wrk. Prints requests/s for each row.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 TOKENCACHE_BINARY" >&2; exit 2; }
bin=$1
command -v wrk >/dev/null || { echo "$0: needs wrk: apt-get install -y wrk" >&2; exit 2; }
DURATION=${DURATION:-10s} CONNECTIONS=${CONNECTIONS:-64} THREADS=${THREADS:-1}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT INT TERM
python3 "$(dirname "$0")/idp.py" > "$work/idp.port" & pids+=($!)
while [ ! -s "$work/idp.port" ]; do sleep 0.05; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port)
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
"$bin" serve --config "$work/gateway.toml" 2> "$work/gateway.log" & pids+=($!)
for port in "$up" "$gw"; do
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
done
curl -fs "http://127.0.0.1:$gw/up/healthz" >/dev/null || { echo "$0: the gateway does not forward; logs in $work" >&2; cat "$work/gateway.log" >&2; exit 1; }
run() { wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | awk '/ 50%/ {p50 = $2} /Requests\/sec/ {rps = $2} /Non-2xx/ {bad = $0} END {printf "%s req/s, p50 %s %s", rps, p50, bad}'; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "direct (upstream /healthz):  $(run "http://127.0.0.1:$up/healthz")"
echo "gateway (/up/healthz):       $(run "http://127.0.0.1:$gw/up/healthz")"
echo "token endpoint (/v1/token):  $(run -H 'Metadata: true' "http://127.0.0.1:$gw/v1/token?profile=bench")"
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
