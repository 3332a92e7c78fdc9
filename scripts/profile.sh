#!/usr/bin/env bash
# Instruction counts per relayed message (issue 13): two nodes under
# `valgrind --tool=callgrind` on a fresh Redis, one relay run of signal-bench
# between them, counters zeroed after a warm-up. Instruction counts do not depend
# on what else the machine is doing, so before/after comparisons are repeatable
# where wall-clock figures are not.
#
#   bash scripts/profile.sh                  # 4 pairs x 2,000 messages
#   PAIRS=8 MESSAGES=4000 bash scripts/profile.sh
#   SCENARIO=fanout PAIRS=4 MESSAGES=200 bash scripts/profile.sh   # per delivery
#
# Prints instructions per message for the sending node (A), the receiving node
# (B) and Redis' commands per message; leaves callgrind.out.{a,b} in
# target/profile for `callgrind_annotate --inclusive=yes`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$ROOT/target/profile
PAIRS=${PAIRS:-4}
MESSAGES=${MESSAGES:-2000}
# SCENARIO=fanout: PAIRS rooms of 5 members, MESSAGES broadcasts each, per delivery.
SCENARIO=${SCENARIO:-relay}
UNIT=$([ "$SCENARIO" = fanout ] && echo delivery || echo "relayed message")
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.*

cargo build --release --quiet --bin signal-node --example signal-bench
BENCH=$ROOT/target/release/examples/signal-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; }
trap cleanup EXIT

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes --logfile "$OUT/redis.log"

ports=()
for side in a b; do
  port=$(free_port)
  env HOST=127.0.0.1 PORT="$port" NODE_ID="prof-$side" KEY_PREFIX="prof:" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    RATE_LIMIT_PER_SECOND=0 RATE_LIMIT_BYTES_PER_SECOND=0 RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$side" \
    "$ROOT/target/release/signal-node" >"$OUT/node-$side.log" 2>&1 &
  pids+=($!); ports+=("$port")
done
for p in "${ports[@]}"; do
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$p/readyz" >/dev/null || { echo "profile: node on $p not ready" >&2; exit 1; }
done
a="ws://127.0.0.1:${ports[0]}"; b="ws://127.0.0.1:${ports[1]}"
zero() {
  for pid in "${pids[@]}"; do HOST=127.0.0.1 callgrind_control -z "$pid" >/dev/null 2>&1; done
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
}

if [ "$SCENARIO" = fanout ]; then
  # Rooms of 5 spread over both nodes, everyone broadcasting; units are deliveries.
  fanout() { "$BENCH" fanout --url "$a" --url "$b" --rooms "$PAIRS" --members 5 --messages "$1"; }
  fanout 50 >/dev/null 2>&1
  zero
  fanout "$MESSAGES" >"$OUT/fanout.json" 2>/dev/null
  total=$((PAIRS * 5 * 4 * MESSAGES))
else
  # Warm-up: connections, scripts, channel tables, allocator caches.
  "$BENCH" relay --a "$a" --b "$b" --pairs "$PAIRS" --messages 200 --in-flight 16 >/dev/null 2>&1
  zero
  "$BENCH" relay --a "$a" --b "$b" --pairs "$PAIRS" --messages "$MESSAGES" --in-flight 16 >"$OUT/relay.json" 2>/dev/null
  total=$((PAIRS * MESSAGES))
fi
for pid in "${pids[@]}"; do HOST=127.0.0.1 callgrind_control -d "$pid" >/dev/null 2>&1; done

for side in a b; do
  # The dump after the run is the numbered file with the highest number.
  file=$(ls -1v "$OUT"/callgrind.out."$side".* 2>/dev/null | tail -1)
  ir=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
  echo "node $side: $((ir / total)) instructions per ${UNIT} ($file)"
done
redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F"[:,=]" -v n="$total" -v u="$UNIT" \
  '/^cmdstat_/{sub("cmdstat_","",$1); if ($3/n >= 0.01) printf "redis %s: %.2f calls per %s\n", $1, $3/n, u}'
