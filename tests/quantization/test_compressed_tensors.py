"""Compressed-tensors INT8 W8A8 checkpoints, written here from the public format (llm-compressor's
``int-quantized``: int8 ``weight`` [out, in] and ``weight_scale`` [out, 1] per linear layer, a
``quantization_config`` in config.json), load onto the W8A8 path with their codes as stored."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagoda import LLM, SamplingParams
from pagoda.quantization.w8a8 import Int8Linear

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEME = {
    "targets": ["Linear"],
    "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False,
                "group_size": None, "observer": "minmax"},
    "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True,
                          "observer": None},
    "output_activations": None,
}
QUANT_CONFIG = {"quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
                "config_groups": {"group_0": SCHEME}, "ignore": ["lm_head"], "kv_cache_scheme": None}


def _write_checkpoints(src: str, root: Path, quant_config: dict = QUANT_CONFIG) -> tuple[str, str]:
    """(int8 checkpoint dir, the same weights dequantized to float32 dir)."""
    int8_dir, deq_dir = root / "int8", root / "dequantized"
    for d in (int8_dir, deq_dir):
        shutil.copytree(src, d, dirs_exist_ok=True)
    tensors = load_file(str(Path(src) / "model.safetensors"))
    quantized, dequantized = {}, {}
    for name, w in tensors.items():
        if name.endswith(".weight") and name.split(".")[-2] in LINEARS:
            scale = (w.abs().amax(1, keepdim=True) / 127).to(torch.bfloat16)  # the model dtype's scales
            codes = torch.round(w / scale.float()).clamp(-127, 127).to(torch.int8)
            quantized[name], quantized[name.replace(".weight", ".weight_scale")] = codes, scale
            dequantized[name] = codes.float() * scale.float()
        else:
            quantized[name] = dequantized[name] = w
    save_file(quantized, str(int8_dir / "model.safetensors"))
    save_file(dequantized, str(deq_dir / "model.safetensors"))
    config = json.loads((int8_dir / "config.json").read_text())
    config["quantization_config"] = quant_config
    (int8_dir / "config.json").write_text(json.dumps(config))
    return str(int8_dir), str(deq_dir)


@pytest.fixture(scope="module")
def checkpoints(tiny_model_factory, tmp_path_factory) -> tuple[str, str]:
    return _write_checkpoints(tiny_model_factory(), tmp_path_factory.mktemp("ct"))


def test_codes_load_as_stored_with_no_dequantized_copy(checkpoints):
    int8_dir, _ = checkpoints
    llm = LLM(int8_dir, dtype="float32", num_kv_blocks=16, show_progress=False)  # quantization "auto"
    model = llm.engine.runner.model
    stored = load_file(str(Path(int8_dir) / "model.safetensors"))
    qkv = model.model.layers[1].self_attn.qkv_proj
    assert isinstance(qkv, Int8Linear)
    parts = [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]
    assert torch.equal(qkv.weight, torch.cat([stored[f"{p}.weight"] for p in parts]))
    assert torch.equal(qkv.weight_scale, torch.cat([stored[f"{p}.weight_scale"] for p in parts]).float().flatten())
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 4
    for m in layers:  # int8 codes and one float32 scale per output channel: nothing else
        held = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
        assert held == m.out_features * m.in_features + 4 * m.out_features


def test_same_tokens_as_w8a8_on_the_dequantized_weights(checkpoints, monkeypatch):
    """Re-quantizing q * s per channel gives q back, so the checkpoint and ``quantization="w8a8"`` on its
    dequantized float32 copy (unsmoothed: no calibration text) run the same integer products; and both track
    the dense float32 model. The checkpoint's ``ignore`` keeps its LM head dense; so does w8a8 here."""
    from pagoda.quantization import smoothing, w8a8

    monkeypatch.setattr(smoothing, "calibration_token_ids", lambda tokenizer: [])
    monkeypatch.setattr(w8a8, "Int8LMHead", lambda head, input_amax=None: head)
    int8_dir, deq_dir = checkpoints
    prompt = "The quick brown fox jumps over the lazy dog. Paged attention stores keys and values."
    params = SamplingParams(temperature=0, max_tokens=12, prompt_logprobs=0, ignore_eos=True)
    outs = {}
    for key, path, quant in (("ckpt", int8_dir, "auto"), ("w8a8", deq_dir, "w8a8"), ("dense", deq_dir, None)):
        llm = LLM(path, dtype="float32", quantization=quant, num_kv_blocks=32, show_progress=False)
        outs[key] = llm.generate(prompt, params)[0]
    assert outs["ckpt"].outputs[0].token_ids == outs["w8a8"].outputs[0].token_ids
    lp = {k: torch.tensor([e[t].logprob for e, t in zip(o.prompt_logprobs[1:], o.prompt_token_ids[1:])])
          for k, o in outs.items()}
    torch.testing.assert_close(lp["ckpt"], lp["w8a8"], atol=1e-4, rtol=1e-4)
    assert (lp["ckpt"] - lp["dense"]).abs().mean() < 0.03 * lp["dense"].abs().mean()


@pytest.mark.parametrize(("path", "value", "field"), [
    (("quant_method",), "hqq", "quant_method"),
    (("format",), "pack-quantized", "format"),
    (("config_groups", "group_0", "weights", "strategy"), "group", "config_groups.group_0.weights.strategy"),
    (("config_groups", "group_0", "weights", "num_bits"), 4, "config_groups.group_0.weights.num_bits"),
    (("config_groups", "group_0", "input_activations", "dynamic"), False,
     "config_groups.group_0.input_activations.dynamic"),
])
def test_unsupported_config_names_the_field_and_supported_values(tiny_model_factory, tmp_path, path, value, field):
    config = copy.deepcopy(QUANT_CONFIG)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    int8_dir, _ = _write_checkpoints(tiny_model_factory(), tmp_path, config)
    with pytest.raises(ValueError, match=rf"unsupported quantization_config: {field} = .*Pagoda supports"):
        LLM(int8_dir, dtype="float32", num_kv_blocks=16, show_progress=False)


def test_a_quantized_checkpoint_rejects_another_quantization(checkpoints):
    with pytest.raises(ValueError, match="quantization must be 'auto' or 'w8a8', got 'fp8'"):
        LLM(checkpoints[0], dtype="float32", quantization="fp8", num_kv_blocks=16, show_progress=False)
