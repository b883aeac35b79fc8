#!/usr/bin/env bash
# Starts a debug roomqd with its HTTP listener, sends a little traffic with
# the CLI (publishes, a subscriber, a refused handshake), scrapes /metrics
# and checks the exposition with `promtool check metrics`, then asks for
# OpenMetrics and checks its content type, families and `# EOF`. Also checks that
# `roomq stats --json` answers. Expects target/debug/{roomqd,roomq}.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

# Ports picked by the kernel would be better; these are unlikely to clash.
tcp=127.0.0.1:17940
http=127.0.0.1:17941
made=$(target/debug/roomqd token)
token=$(printf '%s\n' "$made" | sed -n 's/^token = //p')
printf 'data_dir = "%s/data"\n[[admin.tokens]]\nname = "ci"\n%s\n' "$dir" \
  "$(printf '%s\n' "$made" | grep '^hash = ')" > "$dir/roomq.toml"
target/debug/roomqd --config "$dir/roomq.toml" --listen "$tcp" --http-listen "$http" \
  > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "http://$http/readyz" > /dev/null && break
  sleep 0.1
done
curl -sf "http://$http/readyz" > /dev/null || { cat "$dir/log"; exit 1; }

for i in 1 2 3; do
  target/debug/roomq --addr "$tcp" publish ci-room "ci event" "message $i" > /dev/null
done
target/debug/roomq --addr "$tcp" --client-id ci-reader subscribe ci-room --from earliest --count 3 --idle-exit 10s > /dev/null
target/debug/roomq --addr "$tcp" -n /nowhere publish r e x > /dev/null 2>&1 || true

curl -sf "http://$http/metrics" > "$dir/metrics.txt"
promtool check metrics < "$dir/metrics.txt"
for name in roomq_messages_published_total roomq_deliveries_total roomq_commit_flush_seconds_bucket \
  roomq_handshakes_refused_total process_resident_memory_bytes; do
  grep -q "^$name" "$dir/metrics.txt" || { echo "missing $name"; exit 1; }
done
echo "/metrics: $(grep -vc '^#' "$dir/metrics.txt") samples, promtool check metrics clean"
# A scraper that asks for OpenMetrics (as Prometheus does) gets it.
curl -sf -D "$dir/om.head" -H 'Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' \
  "http://$http/metrics" > "$dir/metrics.om"
grep -qi '^content-type: application/openmetrics-text; version=1.0.0' "$dir/om.head" || { cat "$dir/om.head"; exit 1; }
[ "$(tail -n 1 "$dir/metrics.om")" = "# EOF" ] || { echo "OpenMetrics exposition without # EOF"; exit 1; }
grep -q '^# TYPE roomq_messages_published counter$' "$dir/metrics.om" || { echo "OpenMetrics counter family"; exit 1; }
echo "/metrics as OpenMetrics: ok"
target/debug/roomq --addr "$tcp" --token "$token" --json stats > "$dir/stats.json"
grep -q '"rooms_total":1' "$dir/stats.json" || { cat "$dir/stats.json"; exit 1; }
echo "roomq stats --json: ok"
