"""Hugging Face directories written by transformers' save_pretrained, single file and sharded."""

from __future__ import annotations

import json

import pytest
import torch

from pagoda.weights.safetensors_dir import iter_safetensors, read_hf_config, safetensors_files


@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_reads_every_tensor_of_a_saved_model(tiny_llama, tmp_path, shard):
    kwargs = {"max_shard_size": shard} if shard else {}
    tiny_llama.save_pretrained(tmp_path, **kwargs)
    files = safetensors_files(str(tmp_path))
    assert (len(files) > 1) == bool(shard)
    ours = dict(iter_safetensors(str(tmp_path)))
    reference = tiny_llama.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, reference[name]), name
    config = read_hf_config(str(tmp_path))
    assert config == json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_hf_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        list(iter_safetensors(str(tmp_path)))
