#!/usr/bin/env bash
# Server instructions per operation, native protocol vs RESP: one single-node `raftkv serve`
# under callgrind, driven by raftkv-bench (`--system raftkv` / `raftkv-resp`, same engine,
# clients, sizes). Counters are zeroed before and dumped after each run, so a count covers that
# run only; instruction counts repeat on a loaded machine, where ops/s do not.
#   bench/resp_callgrind.sh [BASE_PORT]   (env: B binaries dir, default target/release; DUR seconds per run, default 15; CLIENTS, default "1 64";
#                                          KEEP=1 keeps the dumps for callgrind_annotate)
# Output: one line per run: workload, clients, system, ops, Ir, Ir/op.
set -eu
cd "$(dirname "$0")/.."
B=${B:-target/release}
BASE=${1:-27500}
DUR=${DUR:-15}
CLIENTS=${CLIENTS:-"1 64"}
DIR=$(mktemp -d)
NATIVE=127.0.0.1:$((BASE + 1))
RESP=127.0.0.1:$((BASE + 2))
valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$DIR/cg.out" \
  "$B/raftkv" serve --id 1 --data-dir "$DIR/n1" --insecure-peers \
  --peers "1=127.0.0.1:$BASE/$NATIVE/$RESP" >"$DIR/server.log" 2>&1 &
VPID=$!
trap 'kill $VPID 2>/dev/null; wait $VPID 2>/dev/null; [ "${KEEP:-}" = 1 ] || rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do
  if $B/raftkv-bench put --system raftkv --endpoints $NATIVE --clients 1 --duration 0.5 \
    --warmup 0 --no-preload --keys 1000 2>&1 | grep -q " 0 errors"; then break; fi
  sleep 1
done
n=0
for wl in put get; do
  for c in $CLIENTS; do
    # Every RESP write carries a session (docs/resp.md), so puts also run native with
    # --sessions ("raftkv+s"): the same exactly-once work in the state machine.
    SYSTEMS="raftkv raftkv-resp"
    [ $wl = put ] && SYSTEMS="raftkv raftkv+s raftkv-resp"
    for label in $SYSTEMS; do
      sys=${label%+s}
      EXTRA=""
      [ "$label" = raftkv+s ] && EXTRA=--sessions
      if [ $sys = raftkv ]; then EP=$NATIVE; else EP=$RESP; fi
      # Reads need keys: the puts above wrote the 1000-key space (--keys 1000 everywhere).
      callgrind_control -z $VPID >/dev/null 2>&1
      OUT=$($B/raftkv-bench $wl --system $sys --endpoints $EP --clients $c --duration "$DUR" \
        --warmup 0 --no-preload --keys 1000 $EXTRA 2>&1)
      callgrind_control -d $VPID >/dev/null 2>&1
      n=$((n + 1))
      F=$(ls -t "$DIR"/cg.out.* | head -1)
      IR=$(grep -E '^(summary|totals):' "$F" | head -1 | awk '{print $2}')
      OPS=$(echo "$OUT" | grep -oE '[0-9]+ ops ok' | awk '{print $1}')
      echo "$wl clients=$c $label ops=$OPS Ir=$IR Ir/op=$((IR / (OPS > 0 ? OPS : 1))) dump=$F"
    done
  done
done
[ "${KEEP:-}" = 1 ] && echo "dumps kept in $DIR"
