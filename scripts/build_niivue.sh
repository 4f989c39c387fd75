#!/usr/bin/env bash
# Rebuild delineo/serve/static/niivue.umd.js, the viewer's only third-party asset, from npm.
# The Python package ships the built file so that `pip install delineo` needs no npm at run time;
# run this (npm needed) only to move to another NiiVue release, then check the viewer tests:
#   scripts/build_niivue.sh 0.69.0 && .venv/bin/python -m pytest -q tests/test_serve_e2e.py
set -euo pipefail
VERSION="${1:-0.69.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm init -y >/dev/null
npm install --no-audit --no-fund "@niivue/niivue@${VERSION}" >/dev/null
SRC="node_modules/@niivue/niivue/dist/niivue.umd.js"
SIZE=$(stat -c %s "$SRC")
if [ "$SIZE" -gt 3000000 ]; then
  echo "niivue.umd.js is $SIZE bytes (> 3 MB): check the build before committing it" >&2
  exit 1
fi
cp "$SRC" "$ROOT/delineo/serve/static/niivue.umd.js"
sed -i "1s/NiiVue [0-9.]*/NiiVue ${VERSION}/" "$ROOT/delineo/serve/static/NIIVUE_LICENSE.txt"
echo "delineo/serve/static/niivue.umd.js: NiiVue ${VERSION}, ${SIZE} bytes"
