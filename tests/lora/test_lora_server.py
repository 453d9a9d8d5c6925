"""The server with LoRA: adapters listed as models, selected by `model`, loaded and unloaded at run
time; bad names and adapters get OpenAI-style errors and the server goes on."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch
from adapters import peft_reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "server"))
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args  # noqa: E402

from pagoda.server.config import ServerConfig  # noqa: E402
from pagoda.server.engine_process_client import EngineProcessClient  # noqa: E402

PROMPT = [5, 17, 33, 80, 9, 120, 7]


@pytest.fixture(scope="module")
def lora_server(tiny_llama_dir, lora_adapters) -> Iterator[LiveServer]:
    client = EngineProcessClient(tiny_engine_args(tiny_llama_dir, enable_lora=True, max_loras=2, max_lora_rank=8))
    client.start()
    modules = (("alpha", lora_adapters["all-r8"]),)
    server = LiveServer(client, {
        "main": ServerConfig(served_model_name=MODEL, api_key=API_KEY, lora_modules=modules, allow_runtime_lora=True),
        "fixed": ServerConfig(served_model_name=MODEL, api_key=API_KEY, lora_modules=modules),
    })
    yield server
    server.stop()
    client.shutdown()


def greedy(server: LiveServer, model: str) -> str:
    out = server.openai().completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0,
                                             extra_body={"ignore_eos": True})
    return out.choices[0].text


def reference_text(model, tokenizer_dir: str) -> str:
    """peft's greedy continuation of PROMPT, decoded."""
    from transformers import AutoTokenizer

    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return AutoTokenizer.from_pretrained(tokenizer_dir).decode(ids[0, len(PROMPT):].tolist())


def test_models_lists_the_base_and_its_adapters(lora_server):
    models = {m.id: m for m in lora_server.openai().models.list().data}
    assert set(models) == {MODEL, "alpha"}
    assert models["alpha"].parent == MODEL and models["alpha"].root.endswith("all-r8")


def test_model_name_selects_the_adapter(lora_server, tiny_llama_dir, lora_adapters):
    base, alpha = greedy(lora_server, MODEL), greedy(lora_server, "alpha")
    assert base != alpha
    assert alpha == reference_text(peft_reference(tiny_llama_dir, lora_adapters["all-r8"]), tiny_llama_dir)


def test_unknown_model_is_a_400_and_the_server_goes_on(lora_server):
    with pytest.raises(openai.BadRequestError) as info:
        greedy(lora_server, "no-such-adapter")
    assert info.value.code == "model_not_found" and "no-such-adapter" in info.value.message
    assert greedy(lora_server, MODEL)


def test_load_and_unload_at_run_time(lora_server, tiny_llama_dir, lora_adapters):
    path = lora_adapters["qv-r4-rslora"]
    r = lora_server.post("/v1/load_lora_adapter", json={"lora_name": "gamma", "lora_path": path})
    assert r.status_code == 200, r.text
    assert "gamma" in {m.id for m in lora_server.openai().models.list().data}
    assert greedy(lora_server, "gamma") == reference_text(peft_reference(tiny_llama_dir, path), tiny_llama_dir)
    again = lora_server.post("/v1/load_lora_adapter", json={"lora_name": "gamma", "lora_path": path})
    assert again.status_code == 400 and "already loaded" in again.json()["error"]["message"]
    assert lora_server.post("/v1/unload_lora_adapter", json={"lora_name": "gamma"}).status_code == 200
    with pytest.raises(openai.BadRequestError):
        greedy(lora_server, "gamma")
    missing = lora_server.post("/v1/unload_lora_adapter", json={"lora_name": "gamma"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "lora_name"


def test_bad_adapters_are_refused_at_load(lora_server, lora_adapters, tmp_path):
    def load(body: dict) -> httpx.Response:
        return lora_server.post("/v1/load_lora_adapter", json=body)

    r = load({"lora_name": "big", "lora_path": lora_adapters["mlp-k-o-r16"]})
    assert r.status_code == 400 and "max_lora_rank 8" in r.json()["error"]["message"]
    r = load({"lora_name": "nowhere", "lora_path": str(tmp_path / "nowhere")})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]["message"]
    r = load({"lora_name": "x", "lora_path": lora_adapters["all-r8"], "lora_int_id": 3})
    assert r.status_code == 400  # a field the server does not implement
    assert greedy(lora_server, "alpha")  # still serving


def test_runtime_loading_needs_the_flag_and_the_key(lora_server, lora_adapters):
    body = {"lora_name": "delta", "lora_path": lora_adapters["qv-r4-rslora"]}
    r = lora_server.post("/v1/load_lora_adapter", name="fixed", json=body)
    assert r.status_code == 403 and "--allow-runtime-lora" in r.json()["error"]["message"]
    r = httpx.post(lora_server.url + "/v1/load_lora_adapter", json=body, timeout=30)
    assert r.status_code == 401
    assert "delta" not in {m.id for m in lora_server.openai().models.list().data}


def test_every_generating_endpoint_honours_the_adapter(lora_server):
    """Chat completions and the Responses API run the adapter that `model` names (greedy: the same
    reply from both), not the base model."""
    client = lora_server.openai()
    messages = [{"role": "user", "content": "Hello there"}]

    def chat(model: str) -> str | None:
        out = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        return out.choices[0].message.content

    def responses(model: str) -> str:
        return client.responses.create(model=model, input="Hello there", max_output_tokens=8, temperature=0).output_text

    assert chat("alpha") != chat(MODEL)
    assert responses("alpha") == chat("alpha")
    assert responses(MODEL) == chat(MODEL)
