#!/usr/bin/env bash
# Installs the npm dependencies from the lock file (idempotent). koffi keeps its native code in
# optional packages, so never install with --omit=optional.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
touch node_modules/.package-lock.json
