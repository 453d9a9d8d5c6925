"""Concurrent image requests share model forwards (the engine driver), over HTTP and in-process."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from pagoda.diffusion.pipeline import GenerationOptions, ImagePipeline
from pagoda.diffusion.tiny import build_tiny_unconditional
from pagoda.server.images import make_router


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny forwards: threading only adds overhead, and badly so on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory) -> str:
    return build_tiny_unconditional(str(tmp_path_factory.mktemp("tiny-uncond-batching")), seed=3, size=8)


def _gate_first_forward(pipe: ImagePipeline):
    """Hold the first model forward until released, recording every forward's batch size."""
    forward, calls = pipe.model.forward, []
    entered, release = threading.Event(), threading.Event()

    def gated(x, t, conds):
        calls.append(len(x))
        if len(calls) == 1:
            entered.set()
            assert release.wait(60)
        return forward(x, t, conds)

    pipe.model.forward = gated
    return calls, entered, release


def _wait_for(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))).astype(int)


def test_concurrent_http_requests_share_forwards(unet_dir):
    pipe = ImagePipeline.from_pretrained(unet_dir)
    calls, entered, release = _gate_first_forward(pipe)
    app = FastAPI()
    app.include_router(make_router(pipe))
    responses = {}
    with TestClient(app) as http:
        def post(key: str, sampler: str, steps: int, seed: int, n: int) -> None:
            responses[key] = http.post("/v1/images/generations", json={
                "prompt": "x", "n": n, "sampler": sampler, "steps": steps, "seed": seed})

        a = threading.Thread(target=post, args=("a", "UniPC AYS", 6, 1, 2))
        a.start()
        assert entered.wait(60)  # a's first forward is running, with a's rows only
        b = threading.Thread(target=post, args=("b", "Euler A", 4, 7, 3))
        b.start()
        _wait_for(lambda: pipe.driver.queued == 1)  # b is handed in while a is mid-forward
        release.set()
        a.join(60)
        b.join(60)
    assert responses["a"].status_code == 200 and responses["b"].status_code == 200
    # b's 4 steps ride along a's steps 2..5: 6 forwards instead of 10
    assert calls == [2, 5, 5, 5, 5, 2]

    # each response equals its request run alone
    for key, (sampler, steps, seed, n) in {"a": ("UniPC AYS", 6, 1, 2), "b": ("Euler A", 4, 7, 3)}.items():
        alone = pipe.generate(["x"] * n, [seed + k for k in range(n)], GenerationOptions(sampler, steps))
        got = [_png(d["b64_json"]) for d in responses[key].json()["data"]]
        for g, im in zip(got, alone):
            assert np.abs(g - np.asarray(im).astype(int)).max() <= 1


def test_a_bad_request_fails_alone(unet_dir):
    pipe = ImagePipeline.from_pretrained(unet_dir)
    with pytest.raises(ValueError):
        pipe.generate(["x"], [0], GenerationOptions("Nope", 4))
    assert len(pipe.generate(["x"], [0], GenerationOptions("DDIM Trailing", 3))) == 1
