#!/usr/bin/env bash
# CI for the TypeScript SDK, called from .ci/run:
#   bash clients/typescript/scripts/ci.sh
# Installs (npm ci), checks the generated code is current, typechecks and
# builds, runs the unit tests, measures the browser bundle (<= 40 KB gz),
# then runs the integration tests against a real roomqd over WebSocket.
# ROOMQD points at an already built binary (default: target/debug/roomqd
# of the repository). Bounded in time; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROOMQD="${ROOMQD:-$(cd ../.. && pwd)/target/debug/roomqd}"

step() { echo "== ts-sdk: $*"; }

step "npm ci"
timeout 300 npm ci --no-audit --no-fund --loglevel=error

step "generated code is current"
timeout 60 sh scripts/check-generated.sh

step "typecheck and build"
timeout 120 npx --no-install tsc -p tsconfig.json
timeout 120 npx --no-install tsc -p tsconfig.test.json

step "unit tests"
timeout 120 node --test --test-timeout=30000 build/test/unit/*.test.js

step "browser bundle size"
timeout 60 node scripts/size.mjs

step "integration tests (roomqd: $ROOMQD)"
if [ ! -x "$ROOMQD" ]; then
  echo "no roomqd binary at $ROOMQD: build it first (cargo build --bin roomqd) or set ROOMQD" >&2
  exit 1
fi
timeout 240 node --test --test-concurrency=1 --test-timeout=60000 build/test/integration/*.test.js
step "ok"
