"""`pagoda serve` as users run it: the bundled default model, the real openai client, SIGTERM to stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pagoda_serve_default_model(tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pagoda.cli.main", "serve", "--port", str(port),
                             "--max-num-seqs", "8"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        assert "SmolLM2" in model
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2+2?"}],
                                           max_tokens=12, temperature=0)
        text = r.choices[0].message.content
        assert text.strip() and r.usage.completion_tokens <= 12
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=12, temperature=0,
            stream=True))
        assert streamed == text
    finally:
        proc.send_signal(signal.SIGTERM)  # what service managers send; Ctrl-C takes the same path
        code = proc.wait(60)
    assert code == 0
    output = (tmp_path / "serve.log").read_text()
    engine_pid = int(re.search(r"engine ready: .* pid (\d+)", output).group(1))
    with pytest.raises(ProcessLookupError):  # the engine process went with the server
        for _ in range(100):
            os.kill(engine_pid, 0)
            time.sleep(0.1)
