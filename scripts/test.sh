#!/usr/bin/env bash
# Installs everything (first run), type-checks pagoda/ (mypy, configured in pyproject.toml) and runs the
# whole test suite, slow real-model tests included. Either failing fails the run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
