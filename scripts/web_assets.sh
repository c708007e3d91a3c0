#!/usr/bin/env bash
# The web UI's front-end packages (htmx, its SSE extension, Chart.js): installed from the npm
# registry by `npm ci` (pinned by corral/server/web/assets-src/package-lock.json) and copied
# into corral/server/web/static/vendor/, which ships as package data. Nothing is fetched at run
# time (corral server works air-gapped) and no vendor file is committed. Idempotent: a stamp
# holding the lock file's digest skips everything when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
src=corral/server/web/assets-src
out=corral/server/web/static/vendor
stamp=$out/.lock-sha256
want=$(sha256sum "$src/package-lock.json" | cut -d' ' -f1)
files=(htmx.min.js sse.min.js chart.umd.js)
ok=1
for f in "${files[@]}"; do [ -s "$out/$f" ] || ok=0; done
if [ "$ok" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "corral setup: npm is missing (scripts/sysdeps.sh)" >&2; exit 1; }
(cd "$src" && npm ci --no-audit --no-fund --silent)
mkdir -p "$out"
install -m 0644 "$src/node_modules/htmx.org/dist/htmx.min.js" "$out/htmx.min.js"
install -m 0644 "$src/node_modules/htmx-ext-sse/dist/sse.min.js" "$out/sse.min.js"
install -m 0644 "$src/node_modules/chart.js/dist/chart.umd.js" "$out/chart.umd.js"
echo "$want" > "$stamp"
