#!/usr/bin/env bash
# The web chat end to end in headless Chromium, as CI runs it (from .ci/run):
#   bash clients/typescript/scripts/e2e.sh
# Installs Debian's chromium when it is missing (apt-get, as root) and the
# npm packages when node_modules is not current (npm ci); typechecks the chat;
# checks that src/web is the build of examples/chat; then runs
# test/e2e against a real roomqd. ROOMQD points at an already built binary
# (default: target/debug/roomqd of this repository); CHROMIUM at the browser
# (default /usr/bin/chromium). Screenshots go to target/e2e/. Bounded in
# time; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROOMQD="${ROOMQD:-$(cd ../.. && pwd)/target/debug/roomqd}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

step() { echo "== chat e2e: $*"; }

if [ ! -x "$CHROMIUM" ]; then
  step "install chromium"
  if [ "$(id -u)" != 0 ]; then
    echo "no Chromium at $CHROMIUM and not root: apt-get install -y chromium, or set CHROMIUM" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y --no-install-recommends chromium \
    || { timeout 300 apt-get update && timeout 600 apt-get install -y --no-install-recommends chromium; }
fi

if [ ! -d node_modules/playwright-core ] || [ ! -f node_modules/.package-lock.json ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "npm ci"
  timeout 300 npm ci --no-audit --no-fund --loglevel=error
fi

step "typecheck the chat"
timeout 120 npx --no-install tsc -p examples/chat/tsconfig.json

step "src/web is the build of examples/chat"
timeout 60 node scripts/build-chat.mjs --check

step "build the tests"
timeout 120 npx --no-install tsc -p tsconfig.test.json

step "Chromium e2e (roomqd: $ROOMQD, browser: $CHROMIUM)"
if [ ! -x "$ROOMQD" ]; then
  echo "no roomqd binary at $ROOMQD: build it first (cargo build --bin roomqd) or set ROOMQD" >&2
  exit 1
fi
timeout 150 node --test --test-concurrency=1 --test-timeout=120000 build/test/e2e/*.test.js
step "ok (screenshots in $(cd ../.. && pwd)/target/e2e)"
