#!/usr/bin/env bash
# The main job of `make run`: an agent-like program inside a sandbox under an example policy.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/corral --help
