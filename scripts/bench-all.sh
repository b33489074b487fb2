#!/usr/bin/env bash
# Run every benchmark in bench/ in turn; each prints its own ratios against its anchors.
set -euo pipefail
cd "$(dirname "$0")/.."
for bench in bench/bench_*.py; do
  echo "=== $bench ==="
  .venv/bin/python "$bench"
done
