#!/usr/bin/env bash
# Native protocol vs RESP on one `raftkv cluster`, same load generator (raftkv-bench's engine:
# `--system raftkv` and `--system raftkv-resp`), same clients, key/value sizes and pipelining,
# each pair run back to back (interleaved) and the whole set twice. Both talk to the leader
# (RESP followers answer -NOTLEADER). Output: plain raftkv-bench reports, one per run.
#   bench/resp_vs_native.sh [BASE_PORT]     (needs target/release/{raftkv,raftkv-bench}; env: B
#   binaries dir, ROUNDS default 2, DUR seconds per run default 5)
set -u
cd "$(dirname "$0")/.."
B=${B:-target/release}
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-5}
BASE=${1:-27400}
DIR=$(mktemp -d)
$B/raftkv cluster --nodes 3 --base-port "$BASE" --dir "$DIR" >"$DIR/cluster.log" 2>&1 &
CPID=$!
trap 'kill $CPID; wait $CPID; rm -rf "$DIR"' EXIT
# The leader is the node whose RESP port takes a SET without error (cluster: RESP = base+9+i).
LEADER=""
for _ in $(seq 1 60); do
  for i in 0 1 2; do
    if $B/raftkv-bench put --system raftkv-resp --endpoints 127.0.0.1:$((BASE + 9 + i)) \
      --clients 1 --duration 0.3 --warmup 0 --no-preload 2>&1 | grep -q " 0 errors"; then
      LEADER=$i
      break 2
    fi
  done
  sleep 0.5
done
[ -n "$LEADER" ] || { echo "no leader found" >&2; exit 1; }
for round in $(seq 1 "$ROUNDS"); do
  for wl in put get; do
    for c in 1 64; do
      for sys in raftkv raftkv-resp; do
        if [ $sys = raftkv ]; then EP=127.0.0.1:$((BASE + LEADER)); else EP=127.0.0.1:$((BASE + 9 + LEADER)); fi
        # RESP writes carry a server-made session, so native puts carry one too (--sessions).
        X=""
        [ $sys = raftkv ] && [ $wl = put ] && X=--sessions
        echo "=== round $round $wl clients=$c $sys $X"
        $B/raftkv-bench $wl --system $sys --endpoints $EP --clients $c --duration "$DUR" --warmup 1 $X 2>&1 | tail -n 4
      done
    done
  done
done
