#!/usr/bin/env bash
# `roomq-loadtest chaos` (kill -9 of roomqd, then restart, every cycle)
# against a roomqd whose rooms are stored in NATS JetStream: starts one
# nats-server with JetStream (sync_interval: always) on a free loopback port
# and a temporary store, points roomqd at it, runs the chaos, stops it.
# Usage: scripts/jetstream-chaos.sh ROOMQD LOADTEST [chaos options...]
# ROOMQD must be built with --features cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
roomqd=$1 loadtest=$2
shift 2
nats=$(bash scripts/install-nats-server.sh)
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then
    # Under set -e a failing command here would replace the exit status.
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/nats.conf" <<CONF
listen: 127.0.0.1:$port
max_payload: 2MB
jetstream { store_dir: "$work/store", sync_interval: always }
CONF
"$nats" -c "$work/nats.conf" 2>"$work/nats.log" &
pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
cat > "$work/roomqd.toml" <<CONF
[storage]
engine = "jetstream"

[jetstream]
urls = "nats://127.0.0.1:$port"
replicas = 1
CONF
status=0
"$loadtest" chaos --roomqd "$roomqd" --config "$work/roomqd.toml" "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "== nats-server log (last 40 lines)" >&2
  tail -40 "$work/nats.log" >&2
fi
exit "$status"
