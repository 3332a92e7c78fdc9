#!/usr/bin/env bash
# Side-by-side benchmark (issue 13): fresh Redis, two nodes of this server, two
# of the Node.js reference (../shared/peers/node_ref, or $NODE_REF) and two of
# examples/floor-relay.rs (the machine's floor: the same hops, nothing done on
# them), the scenarios of examples/signal-bench.rs run against each system in
# alternating order, one table at the end (and every result as JSON lines in
# target/bench/results.jsonl).
# The table is also written to target/bench/table.md, and examples/bench-chart.rs
# draws the same best runs as target/bench/chart.svg (throughput, latency
# percentiles, CPU per message, RSS per connection).
#
#   bash scripts/bench.sh              # full runs (minutes)
#   QUICK=1 bash scripts/bench.sh      # a small smoke run
#   WORKER_THREADS=2 bash scripts/bench.sh   # this server's nodes with 2 threads (default 1)
#   PUBLISH=1 bash scripts/bench.sh    # also copy table.md and chart.svg to docs/bench/
#                                      # (the README embeds docs/bench/chart.svg)
#
# Everything runs on this machine at once, so the figures are relative; the
# rate limiter is off for both systems; resume's mailbox is on (the default).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
NODE_REF=${NODE_REF:-$ROOT/../shared/peers/node_ref}
OUT=$ROOT/target/bench
mkdir -p "$OUT"
: >"$OUT/results.jsonl"

if [ -n "${QUICK:-}" ]; then
  RELAY=(--pairs 4 --messages 2000); FANOUT=(--rooms 4 --members 5 --messages 200); CONNS=(--connections 500)
else
  RELAY=(--pairs 20 --messages 20000); FANOUT=(--rooms 20 --members 5 --messages 2000); CONNS=(--connections 5000)
fi

cargo build --release --quiet --bin signal-node --example signal-bench --example bench-chart --example floor-relay
BENCH=$ROOT/target/release/examples/signal-bench
if [ -d "$NODE_REF" ] && [ ! -d "$NODE_REF/node_modules" ]; then (cd "$NODE_REF" && npm ci --silent); fi

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.1; done; echo "bench: port $1 not ready" >&2; exit 1; }

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes --logfile "$OUT/redis.log"
REDIS_PID=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/process_id/{print $2}' | tr -d '\r')

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "bench: port $1 not open" >&2; exit 1; }

# start SYSTEM: two nodes of SYSTEM (rust, node or floor) on fresh ports; sets PORTS
# and NODE_PIDS. `floor` is examples/floor-relay.rs: the same hops with nothing
# done on them, what the machine gives a server that costs nothing.
start() {
  PORTS=(); NODE_PIDS=()
  if [ "$1" = floor ]; then
    for i in 1 2; do
      local port; port=$(free_port)
      "$ROOT/target/release/examples/floor-relay" --port "$port" --redis "redis://127.0.0.1:$REDIS_PORT/" >"$OUT/$1-$i.log" 2>&1 &
      pids+=($!); NODE_PIDS+=($!); PORTS+=("$port")
    done
    for p in "${PORTS[@]}"; do wait_port "$p"; done
    return
  fi
  for i in 1 2; do
    local port; port=$(free_port)
    local env=(HOST=127.0.0.1 PORT="$port" NODE_ID="$1-$i" KEY_PREFIX="bench-$1:" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
      RATE_LIMIT_PER_SECOND=0 RATE_LIMIT_BYTES_PER_SECOND=0 MAX_CONNECTIONS=20000 RUST_LOG=warn)
    if [ "$1" = rust ]; then
      # Two nodes share two cores here: one runtime thread each, as a pod given
      # one core would run (the Node.js reference is one thread by nature).
      env "${env[@]}" WORKER_THREADS="${WORKER_THREADS:-1}" "$ROOT/target/release/signal-node" >"$OUT/$1-$i.log" 2>&1 &
    else
      (cd "$NODE_REF" && env "${env[@]}" node server.js >"$OUT/$1-$i.log" 2>&1) &
    fi
    pids+=($!); NODE_PIDS+=($!); PORTS+=("$port")
  done
  for p in "${PORTS[@]}"; do wait_ready "$p"; done
  # The node_ref subshell's pid is the shell's: use the listening processes' pids.
  NODE_PIDS=($(for p in "${PORTS[@]}"; do ss -lntpH "sport = :$p" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; done))
}

stop() { kill "${NODE_PIDS[@]}" 2>/dev/null || true; sleep 0.5; }

run() { # run SYSTEM SCENARIO ARGS...
  local system=$1; shift
  local cpu; cpu=$(IFS=,; echo "${NODE_PIDS[*]},$REDIS_PID")
  echo "bench: $system $1" >&2
  "$BENCH" "$@" --pids "$cpu" --label "$system" | tee -a "$OUT/results.jsonl" >/dev/null
}

systems=(rust)
[ -d "$NODE_REF" ] && systems+=(node)
systems+=(floor)
for round in 1 2; do
  # Alternate the order per round so neither system always runs on a warmer box.
  order=("${systems[@]}"); [ "$round" = 2 ] && order=($(printf '%s\n' "${systems[@]}" | tac))
  for system in "${order[@]}"; do
    start "$system"
    a="ws://127.0.0.1:${PORTS[0]}"; b="ws://127.0.0.1:${PORTS[1]}"
    run "$system" relay --a "$a" --b "$b" "${RELAY[@]}"
    run "$system" relay --a "$a" --b "$b" --pairs 20 --messages 400 --rate 200
    # The floor relays directed frames only: no broadcasts.
    [ "$system" != floor ] && run "$system" fanout --url "$a" --url "$b" "${FANOUT[@]}"
    run "$system" conns --url "$a" --pid "${NODE_PIDS[0]}" "${CONNS[@]}"
    stop
  done
done

python3 - "$OUT/results.jsonl" <<'PY' | tee "$OUT/table.md"
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = collections.defaultdict(dict)
def key(r):
    if r["scenario"] == "relay":
        return "relay open loop" if r.get("rate_per_pair") else "relay closed loop"
    return r["scenario"]
for r in rows:
    k, s = key(r), r["label"]
    prev = best[k].get(s)
    complete = lambda x: not x.get("expected") or x["delivered"] >= x["expected"]
    # The best complete run of the rounds; an incomplete one only if none was.
    if prev is None or (complete(r), r["per_second"]) > (complete(prev), prev["per_second"]):
        best[k][s] = r
systems = sorted({r["label"] for r in rows})
print("| scenario | " + " | ".join(systems) + " |")
print("| --- |" + " --- |" * len(systems))
for k, per in best.items():
    cells = []
    for s in systems:
        r = per.get(s)
        if not r:
            cells.append("-"); continue
        cpu = sum(c["us_per_unit"] for c in r["cpu"][:-1]); redis = r["cpu"][-1]["us_per_unit"] if r["cpu"] else 0
        lat = r.get("latency_ms") or r.get("join_ms") or {}
        extra = f", p50 {lat['p50']:.2f} / p99 {lat['p99']:.2f} ms" if lat else ""
        rss = r.get("rss_kib", {}).get("per_connection")
        extra += f", {rss:.1f} KiB/conn" if rss else ""
        expected = r.get("expected")
        if expected and r["delivered"] < expected:
            # A run that lost frames (or stalled 30 s) is not a throughput figure.
            extra += f" (INCOMPLETE: {r['delivered']:,} of {expected:,} delivered)"
        cells.append(f"{r['per_second']:,.0f}/s{extra}; nodes {cpu:.1f} µs, Redis {redis:.1f} µs per unit")
    print(f"| {k} | " + " | ".join(cells) + " |")
PY

cargo run --release --quiet --example bench-chart -- "$OUT/results.jsonl" "$OUT/chart.svg"
echo "bench: $OUT/table.md, $OUT/chart.svg" >&2
if [ "${PUBLISH:-}" = 1 ]; then
  mkdir -p docs/bench
  cp "$OUT/table.md" "$OUT/chart.svg" docs/bench/
  echo "bench: published to docs/bench/" >&2
fi
