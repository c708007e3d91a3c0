#!/usr/bin/env bash
# Runs every benchmark in bench/ (each prints a table and writes bench/results/NAME.json).
set -euo pipefail
cd "$(dirname "$0")/.."
for b in bench/bench_*.py; do
  [ -e "$b" ] || continue
  echo "== $b"
  .venv/bin/python "$b"
done
