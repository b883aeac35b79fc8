#!/usr/bin/env bash
# Runs the benchmark workloads of docs/benchmarks.md and writes one JSON
# report per run into OUT (default ./bench-out), then prints a table of
# medians and min–max.
#
#   crates/roomq-loadtest/scripts/workloads.sh [OUT] [RUNS] [WORKLOAD...]
#
# Workloads: w1-128 w1-1k w1s-128 w3 w4 w5 w7 w7-1m (default: all but w7-1m),
# and over WebSocket (the HTTP listener's /ws): w1-128-ws w1-1k-ws w3-ws w4-ws
# w7-ws; w1-pair alternates w1-128 and w1-128-ws run by run, for their ratio;
# w4-sdk and w5-sdk are w4 and w5 with subscribers on the Rust SDK, acking
# each delivery with Delivery::ack() (--sdk-acks).
# Needs release builds:
#   cargo build --release -p roomq-loadtest --bin roomq-loadtest
#   cargo build --release --bin roomqd
# Every run gets a fresh roomqd on a fresh temporary data directory on
# 127.0.0.1 (w5 fills one backlog, then replays it RUNS times). A run that
# overlapped a compiler (rustc) is marked "busy" in the table: the machine
# has 2 cores, and a compile beside a benchmark moves its figures.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-bench-out}
RUNS=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
WORKLOADS=${*:-w1-128 w1-1k w1s-128 w3 w4 w5 w7}
BIN=${BIN:-target/release}
LT="$BIN/roomq-loadtest"
ROOMQD="$BIN/roomqd"
PORT=${PORT:-7455}
HPORT=$((PORT + 1))
ADDR="127.0.0.1:$PORT"
WSADDR="ws://127.0.0.1:$HPORT"
# Where `run` sends its load: TCP by default, WebSocket for the -ws workloads.
TARGET=$ADDR
mkdir -p "$OUT"
[ -x "$LT" ] && [ -x "$ROOMQD" ] || { echo "build the release binaries first" >&2; exit 2; }

DATA=""
PID=""
stop_broker() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
  if [ -n "$DATA" ]; then rm -rf "$DATA" "$DATA.log"; DATA=""; fi
}
trap stop_broker EXIT
start_broker() {
  stop_broker
  DATA=$(mktemp -d /tmp/roomq-bench-XXXXXX)
  RUST_LOG=warn "$ROOMQD" --listen "$ADDR" --http-listen "127.0.0.1:$HPORT" --data-dir "$DATA" 2>"$DATA.log" &
  PID=$!
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "roomqd did not start; see $DATA.log" >&2; exit 2
}
# Waits (up to 120 s) until no compiler runs, so runs start on a quiet machine.
wait_quiet() {
  for _ in $(seq 1 240); do pgrep -x rustc >/dev/null || pgrep -f clippy-driver >/dev/null || return 0; sleep 0.5; done
}
# run NAME ARGS...: one load run with a JSON report, noting compiler overlap.
run() {
  local name=$1; shift
  wait_quiet
  ( busy=0; while sleep 0.5; do { pgrep -x rustc || pgrep -f clippy-driver; } >/dev/null && { echo busy > "$OUT/$name.busy"; }; done ) &
  local watcher=$!
  rm -f "$OUT/$name.busy"
  "$LT" --addr "$TARGET" --broker-pid "$PID" --no-progress --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" || echo "exit $?" >> "$OUT/$name.txt"
  kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true
  echo "$name: $(grep -E 'confirm rate|deliver rate|broker CPU|verify' "$OUT/$name.txt" | tr -s ' ' | tr '\n' ' ')"
}

for w in $WORKLOADS; do
  TARGET=$ADDR
  case $w in *-ws) TARGET=$WSADDR ;; esac
  case $w in
    w1-pair)
      for i in $(seq 1 "$RUNS"); do
        for t in "$ADDR:w1-128" "$WSADDR:w1-128-ws"; do
          TARGET=${t%:*}; start_broker
          run "${t##*:}-$i" --rooms 1 --publishers 4 --subscribers 0 --window 256 --size 128 --duration 10 --warmup 2 --verify
        done
      done ;;
    w1-128|w1-1k|w1s-128|w1-128-ws|w1-1k-ws)
      size=128; subs=0
      case $w in w1-1k*) size=1024 ;; esac
      [ "$w" = w1s-128 ] && subs=1
      for i in $(seq 1 "$RUNS"); do
        start_broker
        run "$w-$i" --rooms 1 --publishers 4 --subscribers $subs --window 256 --size $size --duration 10 --warmup 2 --verify
      done ;;
    w3|w3-ws)
      for i in $(seq 1 "$RUNS"); do
        start_broker
        run "$w-$i" --rooms 1 --publishers 1 --subscribers 1 --size 128 --rate 10000 --duration 20 --warmup 2 --verify
      done ;;
    w4|w4-ws|w4-sdk)
      sdk=()
      [ "$w" = w4-sdk ] && sdk=(--sdk-acks)
      for i in $(seq 1 "$RUNS"); do
        start_broker
        run "$w-$i" --rooms 1 --publishers 1 --subscribers 100 --size 256 --rate 2000 --duration 20 --warmup 2 --verify "${sdk[@]}"
      done ;;
    w5|w5-sdk)
      sdk=()
      [ "$w" = w5-sdk ] && sdk=(--sdk-acks)
      start_broker
      run "$w-fill" --rooms 1 --publishers 4 --subscribers 0 --window 256 --size 128 --room-prefix backlog --messages 1000000 --warmup 0
      for i in $(seq 1 "$RUNS"); do
        run "$w-$i" --publishers 0 --subscribers 1 --room-prefix backlog --start earliest --warmup 0 --verify "${sdk[@]}"
      done ;;
    w7)
      stop_broker; wait_quiet
      "$LT" chaos --roomqd "$ROOMQD" --cycles 200 --no-progress --json "$OUT/w7.json" > "$OUT/w7.txt" || echo "exit $?" >> "$OUT/w7.txt"
      echo "w7: $(grep -E 'cycles|recovery|lost|verify' "$OUT/w7.txt" | tr -s ' ' | tr '\n' ' ')" ;;
    w7-ws)
      stop_broker; wait_quiet
      "$LT" chaos --roomqd "$ROOMQD" --transport ws --cycles 200 --no-progress --json "$OUT/w7-ws.json" > "$OUT/w7-ws.txt" || echo "exit $?" >> "$OUT/w7-ws.txt"
      echo "w7-ws: $(grep -E 'cycles|recovery|lost|verify' "$OUT/w7-ws.txt" | tr -s ' ' | tr '\n' ' ')" ;;
    w7-1m)
      stop_broker; wait_quiet
      "$LT" chaos --roomqd "$ROOMQD" --cycles 20 --prefill 1000000 --no-progress --json "$OUT/w7-1m.json" > "$OUT/w7-1m.txt" || echo "exit $?" >> "$OUT/w7-1m.txt"
      echo "w7-1m: $(grep -E 'cycles|recovery|lost|verify' "$OUT/w7-1m.txt" | tr -s ' ' | tr '\n' ' ')" ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
  esac
done
stop_broker

python3 - "$OUT" <<'PY'
import json, glob, os, re, statistics, sys
out = sys.argv[1]
groups = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(f)[:-5]
    m = re.match(r"(.*)-(\d+)$", name)
    if not m or name.startswith("w7"):
        continue
    r = json.load(open(f))
    busy = os.path.exists(os.path.join(out, name + ".busy"))
    groups.setdefault(m.group(1), []).append((r, busy))
def fig(vals):
    vals = sorted(vals)
    return f"{statistics.median(vals):,.0f} ({vals[0]:,.0f}–{vals[-1]:,.0f})"
def cpu(rs):
    vals = [r.get('broker_cpu_us_per_msg') for r in rs]
    vals = sorted(v for v in vals if v is not None)
    return f"{statistics.median(vals):.2f} ({vals[0]:.2f}–{vals[-1]:.2f})" if vals else "–"
print(f"\n{'workload':10} {'runs':>4} {'confirm msg/s':>28} {'deliver msg/s':>28} {'confirm p99 µs':>24} {'e2e p99 µs':>24} {'broker CPU µs/msg':>20} verify busy")
for k, runs in groups.items():
    rs = [r for r, _ in runs]
    print(f"{k:10} {len(rs):>4} {fig([r['confirm_rate'] for r in rs]):>28} {fig([r['deliver_rate'] for r in rs]):>28} "
          f"{fig([r['confirm_latency_us']['p99'] for r in rs]):>24} {fig([r['e2e_latency_us']['p99'] for r in rs]):>24} {cpu(rs):>20} "
          f"{'PASS' if all(r['verify']['passed'] for r in rs) else 'FAIL'} {sum(b for _, b in runs)}")
for w in ("w7", "w7-ws", "w7-1m"):
    f = os.path.join(out, w + ".json")
    if os.path.exists(f):
        r = json.load(open(f))
        print(f"{w}: cycles {r['cycles']} confirmed {r['confirmed']:,} lost {r['lost']} duplicates {r['duplicates']} "
              f"out_of_order {r['out_of_order']} redelivered {r['redelivered']:,} stored {r['stored_messages']:,} "
              f"recovery ms p50 {r['recovery_ms']['p50']} p99 {r['recovery_ms']['p99']} max {r['recovery_ms']['max']} "
              f"{'PASS' if r['passed'] else 'FAIL'}")
PY
