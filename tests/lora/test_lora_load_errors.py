"""Adapters the engine cannot run are refused at load, naming the problem; the engine goes on."""

from __future__ import annotations

import os
import shutil

import pytest
from adapters import edit_config, make_adapter

from pagoda import LLM, InvalidRequestError, LoRARequest, SamplingParams

PARAMS = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    engine = LLM(tiny_llama_dir, dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=8,
                 num_kv_blocks=64, show_progress=False)
    yield engine
    engine.shutdown()


def copy(adapter: str, tmp_path, name: str) -> str:
    out = str(tmp_path / name)
    shutil.copytree(adapter, out)
    return out


def refused(llm, path: str, *fragments: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        llm.generate([[5, 6, 7]], PARAMS, use_tqdm=False, lora_request=LoRARequest("bad", 99, path))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert info.value.param == "lora_request"
    # the engine goes on, with and without a good adapter
    assert len(llm.generate([[5, 6, 7]], PARAMS, use_tqdm=False)[0].outputs[0].token_ids) == 4


def test_missing_directory_and_files(llm, lora_adapters, tmp_path):
    refused(llm, str(tmp_path / "nowhere"), "does not exist")
    no_weights = copy(lora_adapters["all-r8"], tmp_path, "no-weights")
    os.remove(os.path.join(no_weights, "adapter_model.safetensors"))
    refused(llm, no_weights, "adapter_model.safetensors")
    no_config = copy(lora_adapters["all-r8"], tmp_path, "no-config")
    os.remove(os.path.join(no_config, "adapter_config.json"))
    refused(llm, no_config, "adapter_config.json")


def test_rank_above_the_limit(llm, lora_adapters):
    refused(llm, lora_adapters["mlp-k-o-r16"], "rank 16", "max_lora_rank 8")


@pytest.mark.parametrize("change, named", [
    (dict(use_dora=True), "DoRA"),
    (dict(bias="all"), "bias='all'"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(peft_type="IA3"), "IA3"),
    (dict(target_modules=["q_proj", "embed_tokens"]), "embed_tokens"),
])
def test_unsupported_variants(llm, lora_adapters, tmp_path, change, named):
    path = copy(lora_adapters["all-r8"], tmp_path, "variant")
    edit_config(path, **change)
    refused(llm, path, named)


def test_real_dora_and_lm_head_adapters(llm, tiny_llama_dir, tmp_path):
    """Adapters as peft writes them: DoRA magnitudes and a LoRA on the LM head are named."""
    dora = make_adapter(tiny_llama_dir, str(tmp_path / "dora"), seed=3, r=4, target_modules=["q_proj"], use_dora=True)
    refused(llm, dora, "DoRA")
    head = make_adapter(tiny_llama_dir, str(tmp_path / "head"), seed=3, r=4, target_modules=["lm_head"])
    refused(llm, head, "lm_head")


def test_one_id_one_adapter(llm, lora_adapters):
    llm.generate([[5, 6]], PARAMS, use_tqdm=False, lora_request=LoRARequest("a", 7, lora_adapters["all-r8"]))
    with pytest.raises(InvalidRequestError, match="already"):
        llm.generate([[5, 6]], PARAMS, use_tqdm=False, lora_request=LoRARequest("b", 7, lora_adapters["qv-r4-rslora"]))


def test_lora_request_without_enable_lora(tiny_llama_dir, lora_adapters):
    plain = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=32, show_progress=False)
    with pytest.raises(InvalidRequestError, match="enable_lora"):
        plain.generate([[5, 6]], PARAMS, use_tqdm=False, lora_request=LoRARequest("a", 1, lora_adapters["all-r8"]))
    plain.shutdown()


def test_bad_options():
    with pytest.raises(ValueError, match="max_loras"):
        LLM(enable_lora=True, max_loras=0)
    with pytest.raises(ValueError, match="lora_int_id"):
        LoRARequest("a", 0, "/x")
