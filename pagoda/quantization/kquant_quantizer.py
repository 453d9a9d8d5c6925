"""A plain round-to-nearest Q4_K / Q5_K / Q6_K quantizer (numpy; gguf-py has no K-quant quantizer) and a GGUF rewriter
that requantizes chosen matrices of a GGUF file, so that K-quant models can be built where no hub is reachable.

Test and benchmark grade: min/max sub-block scales, no llama.cpp-style search for the best scale (its files
quantize better). The bit layouts are gguf-py's (``gguf.quants``), checked by dequantizing with it.
"""

from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

SUPER = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _codes(w: np.ndarray, scale: np.ndarray, shift: np.ndarray, low: int, high: int) -> np.ndarray:
    """rne((w + shift) / scale) clipped to [low, high] (0 where the scale is 0)."""
    safe = np.where(scale == 0, 1, scale)
    return np.where(scale == 0, 0, np.clip(np.rint((w + shift) / safe), low, high)).astype(np.int32)


def _quantize_k4(w: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's common part: (codes uint8 [n, 8, 32] in 0..levels, the 16 header bytes d, dmin, scales)."""
    x = w.reshape(-1, 8, 32).astype(np.float32)  # super-blocks of 8 sub-blocks
    lo = np.minimum(x.min(-1), 0)  # offsets are -dmin m <= 0
    scale_f, min_f = (x.max(-1) - lo) / levels, -lo
    d, dmin = _f16(scale_f.max(-1) / 63), _f16(min_f.max(-1) / 63)
    sc = _codes(scale_f, d.astype(np.float32)[:, None], np.zeros(1, np.float32), 0, 63)
    mn = _codes(min_f, dmin.astype(np.float32)[:, None], np.zeros(1, np.float32), 0, 63)
    s = d.astype(np.float32)[:, None] * sc  # what dequantization will use
    o = dmin.astype(np.float32)[:, None] * mn
    q = _codes(x, s[..., None], o[..., None], 0, levels).astype(np.uint8)
    n = x.shape[0]
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    scales = np.concatenate([(sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6), (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)], axis=1)
    header = np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), scales], axis=1)
    return q, header


def _nibble_pairs(q: np.ndarray) -> np.ndarray:
    """[n, 8, 32] codes -> 128 bytes per super-block: 32 per pair of sub-blocks, the first low, the second high."""
    pairs = (q & 0x0F).reshape(q.shape[0], 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(q.shape[0], 128)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> Q4_K blocks uint8 [rows, cols / 256 * 144]."""
    q, header = _quantize_k4(w, 15)
    return np.concatenate([header, _nibble_pairs(q)], axis=1).reshape(w.shape[0], -1)


def quantize_q5_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> Q5_K blocks uint8 [rows, cols / 256 * 176]."""
    q, header = _quantize_k4(w, 31)
    fifth = (q >> 4) & 1  # bit j of byte i: weight i of sub-block j
    qh = (fifth << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)).sum(1, dtype=np.uint8)
    return np.concatenate([header, qh, _nibble_pairs(q)], axis=1).reshape(w.shape[0], -1)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> Q6_K blocks uint8 [rows, cols / 256 * 210]."""
    rows, cols = w.shape
    x = w.reshape(-1, 16, 16).astype(np.float32)
    scale_f = np.abs(x).max(-1) / 31
    d = _f16(scale_f.max(-1) / 127)
    sc = _codes(scale_f, d.astype(np.float32)[:, None], np.zeros(1, np.float32), 0, 127)
    s = d.astype(np.float32)[:, None] * sc
    q = (_codes(x, s[..., None], np.zeros(1, np.float32), -32, 31) + 32).astype(np.uint8)
    n = x.shape[0]
    halves = q.reshape(n, 2, 4, 32)  # per 128 weights: 4 runs of 32
    low, high = halves & 0x0F, halves >> 4
    nib = low.reshape(n, 2, 2, 64)  # runs 0, 1 in the low nibbles of 64 bytes, runs 2, 3 in the high ones
    ql = (nib[:, :, 0] | (nib[:, :, 1] << 4)).reshape(n, 128)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    blocks = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)
    return blocks.reshape(rows, cols // SUPER * 210)


QUANTIZERS: dict[GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLQuantizationType.Q4_K: quantize_q4_k, GGMLQuantizationType.Q5_K: quantize_q5_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k}


def requantize_gguf(src: str, dst: str, pick: Callable[[str, tuple[int, int]], GGMLQuantizationType | None]) -> int:
    """Copies the GGUF ``src`` to ``dst`` with each 2-D tensor for which ``pick(gguf name, (rows, cols))`` names
    a K-quant dequantized and requantized to it (its rows stay in file order); returns how many were."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    changed = 0
    for t in reader.tensors:
        shape = tuple(int(v) for v in reversed(t.shape.tolist()))
        kind = pick(t.name, (shape[0], shape[-1])) if len(shape) == 2 else None
        if kind is not None and shape[1] % SUPER == 0:
            w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            blocks = QUANTIZERS[kind](w)
            writer.add_tensor(t.name, blocks, raw_shape=blocks.shape, raw_dtype=kind)
            changed += 1
        elif t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_tensor(t.name, np.array(t.data))
        else:
            data = np.array(t.data)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return changed
