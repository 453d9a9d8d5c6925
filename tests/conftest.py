from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest
import torch

if not torch.cuda.is_available():
    # tests/triton run Triton's kernels on its CPU interpreter, which must be on before anything (diffusers,
    # torch._dynamo) imports triton.language: its own @jit helpers (tl.zeros, ...) are built at that import
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))
from leftovers import live_children, rank_folders  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402

torch.set_num_threads(2)

# the session's own temp dir (inherited by every process it starts), so that the leftover check at
# the end sees only what this session made
_SESSION_TMP = tempfile.mkdtemp(prefix="pagoda-tests-")
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if it left parallel engines' temp folders or live child processes behind."""
    deadline = time.monotonic() + 10  # processes being reaped right now get a moment
    while live_children(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = rank_folders(_SESSION_TMP) + live_children(os.getpid())
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("the test session left behind:\n  " + "\n  ".join(leftovers), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A random Llama (GQA 4/2 heads, tied embeddings) with a small BPE tokenizer and ChatML template."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Builds (once per set of options) a tiny model directory: arch, tie, rope_scaling, num_kv_heads."""
    cache: dict[tuple, str] = {}

    def make(**options) -> str:
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        if key not in cache:
            cache[key] = build_tiny_model(str(tmp_path_factory.mktemp("tiny")), **options)
        return cache[key]

    return make
