#!/usr/bin/env bash
# Installs everything (first run) and runs the whole test suite, slow real-model tests included.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
