#!/usr/bin/env bash
# Wall time of a warm `tokencache get` (the token already cached in the
# default sled store), measured with hyperfine, for each binary given.
#
#   cargo build --release -p token-cli
#   token-cli/bench/warm-get.sh target/release/tokencache [OTHER_BINARY...]
#
# Needs hyperfine (`apt-get install -y hyperfine`) and python3 (a one-file
# token endpoint on a free loopback port; a warm get never calls it). Prints
# p50/p90/mean wall time and user/system CPU per binary, and the load.
#
# STORE=redis: the token cached in a private redis-server (started on a free
# loopback port, stopped at the end) instead of the default sled store.
# EXTRA_ENV="NAME=VALUE ...": extra environment for every measured run.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TOKENCACHE_BINARY..." >&2; exit 2; }
RUNS=${RUNS:-300}
work=$(mktemp -d)
redis_pid=
trap 'kill "$idp" $redis_pid 2>/dev/null || true; rm -rf "$work"' EXIT INT TERM
python3 "$(dirname "$0")/idp.py" > "$work/port" & idp=$!
while [ ! -s "$work/port" ]; do sleep 0.05; done
port=$(cat "$work/port")
export HOME="$work/home" XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" BENCH_SECRET=bench-secret
args="get --token-url http://127.0.0.1:$port/token --client-id bench --client-secret-env BENCH_SECRET --scope a"
if [ "${STORE:-sled}" = redis ]; then
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 & redis_pid=$!
  until redis-cli -p "$rport" ping > /dev/null 2>&1; do sleep 0.05; done
  args="$args --store redis://127.0.0.1:$rport"
fi
envs=()
for kv in ${EXTRA_ENV:-}; do envs+=("$kv"); done
for bin in "$@"; do
  "$bin" $args > /dev/null 2>&1   # cache the token (a miss)
  "$bin" $args > /dev/null        # and once warm
done
cmds=()
for bin in "$@"; do
  if [ ${#envs[@]} -gt 0 ]; then cmds+=("env ${envs[*]} $bin $args"); else cmds+=("$bin $args"); fi
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$work/result.json" "${cmds[@]}" >/dev/null
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/result.json" <<'PY'
import json, sys
for x in json.load(open(sys.argv[1]))['results']:
    t = sorted(x['times']); n = len(t)
    print(f"{x['command'].split(' get ')[0]}: p50 {x['median']*1e3:.2f} ms, p90 {t[int(n*0.9)]*1e3:.2f} ms, "
          f"mean {x['mean']*1e3:.2f} ms, user {x['user']*1e3:.2f} ms, sys {x['system']*1e3:.2f} ms (n={n})")
PY
