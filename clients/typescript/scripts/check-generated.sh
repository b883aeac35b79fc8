#!/bin/sh
# Checks that src/gen/ is what the generator makes from ../../proto today:
# regenerates into a temporary directory and compares. Fails with the diff
# and the command to fix it.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx --no-install buf generate ../../proto --template buf.gen.yaml --output "$tmp"
if ! diff -ru src/gen "$tmp/src/gen"; then
  echo "src/gen is not current with proto/: run 'npm run generate' in clients/typescript and commit" >&2
  exit 1
fi
echo "generated code is current"
