#!/usr/bin/env bash
# The gateway beside the proxies the field uses, in one run on loopback
# (issue 19, "Measure"): each forwards GET /up/healthz to the same upstream
# with an Authorization header and the prefix stripped.
#
#   nginx:    proxy_pass to a keepalive upstream, proxy_set_header Authorization
#             (a static value)
#   haproxy:  http-request set-header Authorization (static), http-reuse always
#   gateway:  `tokencache serve`, a route with a token from its cache
#
# The upstream is another `tokencache serve` answering /healthz (hyper). The
# gateway takes its token from a one-file Python token endpoint at start-up
# (idp.py); no request of the run reaches it. Every server gets 2 workers
# (nginx worker_processes, haproxy nbthread, the gateway's Tokio runtime on a
# 2-core machine).
#
# Rows:
#   HTTP/1.1, CONNECTIONS connections: req/s, wrk's p50, and the CPU time
#     the proxy's processes spent per request (utime+stime deltas from
#     /proc/PID/stat; nginx: master and workers), and its user and kernel
#     parts, medians over ROUNDS rounds that alternate the three;
#   HTTP/1.1, one connection: p50 latency, and the p50 added to the direct
#     one (wrk -> upstream);
#   h2c with prior knowledge (h2load, CONNECTIONS connections x STREAMS
#     streams; nginx `listen ... http2`, haproxy `proto h2`): req/s and CPU
#     per request, when h2load is installed;
#   HTTP/1.1 at a fixed rate (h2load --h1 --rps, RATE requests/s in all,
#     default 20000): CPU per request when every proxy does the same work
#     per second. At saturation, a proxy that forwards more also batches
#     more (more events per epoll_wait, fewer sleeping peers to wake), so
#     the saturated rows flatter the faster one; these rows do not.
#
#   cargo build --release -p token-cli
#   token-cli/bench/proxies.sh target/release/tokencache
#
# Needs wrk, nginx, haproxy (apt packages wrk, nginx-light, haproxy) and
# python3; h2load (apt nghttp2-client) for the h2c rows. Installs nothing:
# says what is missing and stops. Runs nginx and haproxy in the foreground on
# loopback ports of its own, with configurations in a temporary directory,
# and stops them (and only them) on exit.
#
# BASELINE=path/to/another/tokencache adds a gateway from that binary (e.g. a
# build of an earlier commit), its rows alternated with the others.
# ACCESS_LOG=1 gives nginx an access log buffered as the gateway's is
# (`buffer=64k flush=100ms`) and leaves the gateway's on (its default);
# without it, nginx logs nothing (`access_log off`) and the gateway runs
# with RUST_LOG=warn (no access lines), so both do the same work. haproxy
# logs nothing either way (its log goes to syslog, not set up here).
# DURATION (default 5s) and CONNECTIONS (64) tune wrk, STREAMS (10) h2load,
# RATE (20000) the fixed-rate rows, ROUNDS (2) the rounds. About 80 s with
# the defaults.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 TOKENCACHE_BINARY" >&2; exit 2; }
bin=$1
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "$0: needs these apt packages: ${missing[*]} (apt-get install -y ${missing[*]}); nothing was installed" >&2
  exit 2
fi
have_h2load=1
command -v h2load >/dev/null || have_h2load=0
DURATION=${DURATION:-5s} CONNECTIONS=${CONNECTIONS:-64} STREAMS=${STREAMS:-10} ROUNDS=${ROUNDS:-2} RATE=${RATE:-20000}
work=$(mktemp -d)
if [ -n "${ACCESS_LOG:-}" ]; then
  gateway_log=${RUST_LOG:-}
  nginx_access="access_log $work/nginx/logs/access.log combined buffer=64k flush=100ms;"
else
  gateway_log=warn
  nginx_access="access_log off;"
fi
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM
python3 "$(dirname "$0")/idp.py" > "$work/idp.port" & pids+=($!)
while [ ! -s "$work/idp.port" ]; do sleep 0.05; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); gw=$(free_port); bl=$(free_port); ng=$(free_port); ng2=$(free_port); hp=$(free_port); hp2=$(free_port)
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
"$bin" serve --config "$work/upstream.toml" 2> "$work/upstream.log" & up_pid=$!; pids+=($up_pid)
RUST_LOG=$gateway_log "$bin" serve --config "$work/gateway.toml" 2> "$work/gateway.log" & gw_pid=$!; pids+=($gw_pid)
if [ -n "${BASELINE:-}" ]; then
  sed "s/127.0.0.1:$gw/127.0.0.1:$bl/" "$work/gateway.toml" > "$work/baseline.toml"
  RUST_LOG=$gateway_log "$BASELINE" serve --config "$work/baseline.toml" 2> "$work/baseline.log" & bl_pid=$!; pids+=($bl_pid)
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$bl/readyz" >/dev/null && break; sleep 0.05; done
fi

mkdir -p "$work/nginx/logs"
cat > "$work/nginx.conf" <<NGINX
user root;
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  $nginx_access
  # nginx closes a client connection (HTTP/1.1 or h2) after 1000 requests
  # by default, and h2load does not reconnect: its h2c row stopped at
  # 64 x 1000 requests. The gateway and haproxy set no such limit.
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream up { server 127.0.0.1:$up; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$ng;
    listen 127.0.0.1:$ng2 http2;
    location /up/ {
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer static-benchmark-token";
    }
  }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx.conf" -g 'daemon off;' & ng_pid=$!; pids+=($ng_pid)

cat > "$work/haproxy.cfg" <<HAPROXY
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend gw
  bind 127.0.0.1:$hp
  bind 127.0.0.1:$hp2 proto h2
  default_backend up
backend up
  http-request replace-path ^/up/(.*) /\1
  http-request set-header Authorization "Bearer static-benchmark-token"
  server up 127.0.0.1:$up
HAPROXY
haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 & hp_pid=$!; pids+=($hp_pid)

for port in "$up" "$gw"; do
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
done
for url in "http://127.0.0.1:$gw/up/healthz" "http://127.0.0.1:$ng/up/healthz" "http://127.0.0.1:$hp/up/healthz"; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null && break; sleep 0.05; done
  curl -fs "$url" >/dev/null || { echo "$0: $url does not forward; logs in $work" >&2; cat "$work"/*.log "$work/nginx/logs/error.log" >&2 || true; trap - EXIT; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; exit 1; }
done

# The CPU ticks of a process and its children (nginx's workers), user
# and kernel: "USER SYS".
ticks() {
  local u=0 s=0 p pu ps
  for p in $1 $(pgrep -P "$1" || true); do
    read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$(( u + pu )); s=$(( s + ps ))
  done
  echo "$u $s"
}
# spent BEFORE AFTER: the user and kernel ticks between two `ticks`, as
# "USER,SYS" (one field of a row).
spent() {
  local u0 s0 u1 s1
  read -r u0 s0 <<<"$1"; read -r u1 s1 <<<"$2"
  echo "$(( u1 - u0 )),$(( s1 - s0 ))"
}
# run NAME PID URL [wrk args]: one wrk run; appends "NAME rps ticks p50" to rows.
run() {
  local name=$1 pid=$2 url=$3; shift 3
  local before out rps p50; before=$(ticks "$pid")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/ 50%/ {print $2}' <<<"$out")
  echo "$name $rps $(spent "$before" "$(ticks "$pid")") $p50" >> "$work/rows"
  printf '%-22s %s req/s, p50 %s %s\n' "$name" "$rps" "$p50" "$(grep Non-2xx <<<"$out" || true)"
}
# one NAME URL: p50 at one connection, appended to latency.
one() {
  local out; out=$(wrk -t1 -c1 -d3s --latency "$2")
  echo "$1 $(awk '/ 50%/ {print $2}' <<<"$out")" >> "$work/latency"
}
# h2 NAME PID URL: one h2load run; appends "NAME rps ticks -" to rows.
h2() {
  local name=$1 pid=$2 url=$3 before out rps
  before=$(ticks "$pid")
  out=$(h2load -c"$CONNECTIONS" -m"$STREAMS" -D "${DURATION%s}" "$url" 2>&1)
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  local ok; ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
  echo "$name $rps $(spent "$before" "$(ticks "$pid")") -" >> "$work/rows"
  printf '%-22s %s req/s (2xx: %s)\n' "$name" "$rps" "$ok"
}

# fixed NAME PID URL: HTTP/1.1 at RATE requests/s (h2load --h1); appends
# "NAME rps ticks -" to rows.
fixed() {
  local name=$1 pid=$2 url=$3 before out rps
  before=$(ticks "$pid")
  out=$(h2load --h1 -c"$CONNECTIONS" --rps=$(( RATE / CONNECTIONS )) -D "${DURATION%s}" "$url" 2>&1)
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  echo "$name $rps $(spent "$before" "$(ticks "$pid")") -" >> "$work/rows"
  printf '%-22s %s req/s\n' "$name" "$rps"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run direct "$up_pid" "http://127.0.0.1:$up/healthz"
for _ in $(seq "$ROUNDS"); do
  run nginx "$ng_pid" "http://127.0.0.1:$ng/up/healthz"
  run haproxy "$hp_pid" "http://127.0.0.1:$hp/up/healthz"
  run gateway "$gw_pid" "http://127.0.0.1:$gw/up/healthz"
  if [ -n "${BASELINE:-}" ]; then run "baseline gateway" "$bl_pid" "http://127.0.0.1:$bl/up/healthz"; fi
done
one direct "http://127.0.0.1:$up/healthz"
one nginx "http://127.0.0.1:$ng/up/healthz"
one haproxy "http://127.0.0.1:$hp/up/healthz"
one gateway "http://127.0.0.1:$gw/up/healthz"
if [ "$have_h2load" = 1 ]; then
  h2 "h2c nginx" "$ng_pid" "http://127.0.0.1:$ng2/up/healthz"
  h2 "h2c haproxy" "$hp_pid" "http://127.0.0.1:$hp2/up/healthz"
  h2 "h2c gateway" "$gw_pid" "http://127.0.0.1:$gw/up/healthz"
  for _ in $(seq "$ROUNDS"); do
    fixed "fixed nginx" "$ng_pid" "http://127.0.0.1:$ng/up/healthz"
    fixed "fixed haproxy" "$hp_pid" "http://127.0.0.1:$hp/up/healthz"
    fixed "fixed gateway" "$gw_pid" "http://127.0.0.1:$gw/up/healthz"
  done
else
  echo "no h2c or fixed-rate rows: h2load is not installed (apt-get install -y nghttp2-client)"
fi
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/rows" "$work/latency" "${DURATION%s}" "$(getconf CLK_TCK)" <<'PY'
import collections, statistics, sys
def us(text):
    for unit, f in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float("nan")
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, ticks, p50 = line.rsplit(" ", 3)
    user, sys_ = (int(t) for t in ticks.split(","))
    rows[name].append((float(rps or 0), user, sys_, p50.strip()))
seconds, hz = float(sys.argv[3]), float(sys.argv[4])
med = {}
for name, runs in rows.items():
    rps = statistics.median(r for r, _, _, _ in runs)
    per = lambda t, r: t / hz / (r * seconds) * 1e6
    cpu = statistics.median(per(u + k, r) for r, u, k, _ in runs if r)
    user = statistics.median(per(u, r) for r, u, _, _ in runs if r)
    kernel = statistics.median(per(k, r) for r, _, k, _ in runs if r)
    med[name] = (rps, cpu)
    print(f"median {name:18} {rps:8.0f} req/s   {cpu:5.1f} us CPU per request (user {user:4.1f}, kernel {kernel:4.1f})")
lat = dict(l.split() for l in open(sys.argv[2]))
direct = us(lat.get("direct", "nan"))
for name, p50 in lat.items():
    if name != "direct":
        print(f"one connection {name:10} p50 {p50:>8} (+{us(p50) - direct:.0f} us over direct)")
if "gateway" in med and "nginx" in med:
    (g_rps, g_cpu), (n_rps, n_cpu) = med["gateway"], med["nginx"]
    print(f"gateway/nginx: CPU per request {g_cpu / n_cpu:.2f}x (goal <= 1.2), req/s {g_rps / n_rps:.2f}x (goal >= 0.9)")
if "fixed gateway" in med and "fixed nginx" in med:
    print(f"gateway/nginx at the same rate: CPU per request {med['fixed gateway'][1] / med['fixed nginx'][1]:.2f}x")
PY
