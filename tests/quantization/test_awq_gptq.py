"""AWQ and GPTQ 4-bit checkpoints, written here from the tools' public layouts (AutoAWQ "gemm": int32 qweight
[in, out / 8] in the interleaved nibble order 0 2 4 6 1 3 5 7; AutoGPTQ "gptq": int32 qweight [in / 8, out],
zeros stored minus one, g_idx with act-order), load onto the packed int4 kernel and give the greedy tokens of the
same weights dequantized in float32 (transformers as the reference, under the tie rule)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import assert_greedy_matches
from safetensors.torch import load_file, save_file

from pagoda import LLM, SamplingParams
from pagoda.quantization.int4_checkpoint import AWQ_ORDER, Int4CheckpointLinear

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARED_INPUT = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "gate_proj": "mlp", "up_proj": "mlp"}


def _quantize(w: torch.Tensor, group_of: torch.Tensor, groups: int):
    """Asymmetric min-max 4-bit per (output, group): codes [out, in], zeros and float16 scales [groups, out]."""
    out = w.shape[0]
    scales = torch.empty(groups, out, dtype=torch.float16)
    zeros = torch.empty(groups, out, dtype=torch.int64)
    codes = torch.empty_like(w, dtype=torch.int64)
    for g in range(groups):
        cols = (group_of == g).nonzero().flatten()
        lo, hi = w[:, cols].amin(1).clamp(max=0), w[:, cols].amax(1).clamp(min=0)
        s = ((hi - lo) / 15).clamp(min=1e-6).half()
        z = torch.round(-lo / s.float()).clamp(0, 15).long()
        codes[:, cols] = (torch.round(w[:, cols] / s.float()[:, None]) + z[:, None]).clamp(0, 15).long()
        scales[g], zeros[g] = s, z
    dequantized = (codes - zeros[group_of].t()).float() * scales[group_of].t().float()
    return codes, zeros, scales, dequantized


def _pack_int32(nibbles: np.ndarray) -> torch.Tensor:
    """[..., 8] values 0..15, nibble i at bits 4i -> int32 [...]."""
    words = sum(nibbles[..., i].astype(np.uint32) << np.uint32(4 * i) for i in range(8))
    return torch.from_numpy(np.ascontiguousarray(words.astype(np.uint32)).view(np.int32))


def _awq_tensors(codes, zeros, scales):
    qw = codes.t().numpy().reshape(codes.shape[1], -1, 8)[:, :, list(AWQ_ORDER)]  # nibble i = output order[i]
    qz = zeros.numpy().reshape(zeros.shape[0], -1, 8)[:, :, list(AWQ_ORDER)]
    return {"qweight": _pack_int32(qw), "qzeros": _pack_int32(qz), "scales": scales}


def _gptq_tensors(codes, zeros, scales, group_of):
    qw = codes.t().numpy().reshape(-1, 8, codes.shape[0]).transpose(0, 2, 1)  # [in / 8, out, 8]
    qz = (zeros - 1).numpy().reshape(zeros.shape[0], -1, 8)
    return {"qweight": _pack_int32(qw), "qzeros": _pack_int32(qz), "scales": scales,
            "g_idx": group_of.to(torch.int32)}


def _write(src: str, root: Path, method: str, group: int, desc_act: bool = False) -> tuple[str, str]:
    quant_dir, deq_dir = root / method, root / f"{method}-dequantized"
    for d in (quant_dir, deq_dir):
        shutil.copytree(src, d, dirs_exist_ok=True)
    tensors = load_file(str(Path(src) / "model.safetensors"))
    rng = torch.Generator().manual_seed(group)
    perms: dict[tuple[str, str], torch.Tensor] = {}
    quantized, dequantized = {}, {}
    for name, w in tensors.items():
        proj = name.split(".")[-2]
        if not name.endswith(".weight") or proj not in LINEARS:
            quantized[name] = dequantized[name] = w
            continue
        k = w.shape[1]
        group_of = torch.arange(k) // group
        if desc_act:  # act-order: a permutation per input, shared by the layers that read it (as GPTQ's is)
            key = (name.rsplit(".", 3)[0], SHARED_INPUT.get(proj, proj))
            perm = perms.setdefault(key, torch.randperm(k, generator=rng))
            group_of = torch.empty_like(perm)
            group_of[perm] = torch.arange(k) // group
        codes, zeros, scales, deq = _quantize(w.float(), group_of, k // group)
        parts = _awq_tensors(codes, zeros, scales) if method == "awq" else _gptq_tensors(codes, zeros, scales,
                                                                                           group_of)
        base = name.removesuffix(".weight")
        quantized.update({f"{base}.{part}": t for part, t in parts.items()})
        dequantized[name] = deq
    save_file(quantized, str(quant_dir / "model.safetensors"))
    save_file(dequantized, str(deq_dir / "model.safetensors"))
    config = json.loads((quant_dir / "config.json").read_text())
    if method == "awq":
        config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                         "version": "gemm", "modules_to_not_convert": None}
    else:
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group, "sym": False,
                                         "desc_act": desc_act, "checkpoint_format": "gptq", "damp_percent": 0.01}
    (quant_dir / "config.json").write_text(json.dumps(config))
    return str(quant_dir), str(deq_dir)


@pytest.mark.parametrize(("method", "group", "desc_act"), [("awq", 64, False), ("gptq", 64, False),
                                                           ("gptq", 32, True)])
def test_packed_checkpoint_matches_its_dequantized_weights(tiny_model_factory, tmp_path, method, group, desc_act):
    from transformers import AutoModelForCausalLM

    quant_dir, deq_dir = _write(tiny_model_factory(), tmp_path, method, group, desc_act)
    packed = LLM(quant_dir, dtype="float32", num_kv_blocks=64, show_progress=False)  # quantization "auto"
    layers = [m for m in packed.engine.runner.model.modules() if isinstance(m, Int4CheckpointLinear)]
    assert len(layers) == 2 * 4
    assert any(m.perm is not None for m in layers) == desc_act
    for m in layers:  # nibbles + float32 scale and offset per 32 inputs: no dequantized copy
        held = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
        assert m.dense.numel() == 0 and held == m.out_features * m.in_features * (0.5 + 8 / 32) + (
            0 if m.perm is None else 8 * m.in_features)
    dense = LLM(deq_dir, dtype="float32", quantization=None, num_kv_blocks=64, show_progress=False)
    ref = AutoModelForCausalLM.from_pretrained(deq_dir, dtype=torch.float32).eval()
    rng = random.Random(0)
    vocab = ref.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 30))] for _ in range(5)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    for prompt, x, y in zip(prompts, packed.generate(prompts, params), dense.generate(prompts, params), strict=True):
        assert_greedy_matches(ref, prompt, x.outputs[0].token_ids)
        assert x.outputs[0].token_ids == y.outputs[0].token_ids


@pytest.mark.parametrize(("change", "field"), [({"bits": 8}, "bits"), ({"group_size": 16}, "group_size"),
                                               ({"version": "gemv"}, "version"), ({"quant_method": "bitsandbytes"},
                                                                                  "quant_method")])
def test_unsupported_int4_config_names_the_field(tiny_model_factory, tmp_path, change, field):
    quant_dir, _ = _write(tiny_model_factory(), tmp_path, "awq", 64)
    config = json.loads((Path(quant_dir) / "config.json").read_text())
    config["quantization_config"].update(change)
    (Path(quant_dir) / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"unsupported quantization_config: {field} = .*Pagoda supports"):
        LLM(quant_dir, dtype="float32", num_kv_blocks=16, show_progress=False)
