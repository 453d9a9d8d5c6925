"""AWQ and GPTQ 4-bit checkpoints (Hugging Face directories) onto the packed int4 kernel, no dequantized copy.

Both store, per linear layer, 4-bit codes q packed eight to an int32, and per (group of ``group_size`` inputs,
output) a float16 scale s and a 4-bit zero z: w = (q - z) * s. Layouts (the tools' own, as vLLM reads them):

- AWQ (AutoAWQ ``version="gemm"``): ``qweight`` int32 [in, out / 8] and ``qzeros`` int32 [in / g, out / 8],
  packed along the outputs in the interleaved order 0 2 4 6 1 3 5 7 (nibble i holds output 8c + order[i]);
  ``scales`` [in / g, out].
- GPTQ (AutoGPTQ / GPTQModel ``checkpoint_format="gptq"``): ``qweight`` int32 [in / 8, out] packed along the
  inputs (nibble i of row r is input 8r + i), ``qzeros`` int32 [in / g, out / 8] along the outputs storing z - 1,
  ``scales`` [in / g, out], ``g_idx`` int32 [in]: each input's group. With act-order (``desc_act``) the groups are
  not contiguous runs of inputs; the layer then sorts its inputs by group once at load (a permutation shared by
  the parts of a fused layer, which see the same inputs) and gathers the activations' columns in that order.

On the kernel's side a group of 32 inputs has w = q * scale + offset: scale = s and offset = -z * s, both exact
in float32 (a 4-bit integer times a float16), repeated for each 32 of a larger group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagoda.layers.linear import LinearBase, RowParallelLinear, set_weight_loader
from pagoda.quantization.gguf_int4 import GROUP, Int4Linear

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ int32 holds output 8c + AWQ_ORDER[i]
SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class Int4CheckpointConfig:
    """A validated AWQ / GPTQ ``quantization_config``."""

    method: str  # "awq" | "gptq"
    group_size: int
    desc_act: bool = False

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return ("qweight", "qzeros", "scales", "g_idx") if self.method == "gptq" else ("qweight", "qzeros", "scales")


def _unsupported(field: str, value: Any, supported: Any) -> ValueError:
    return ValueError(f"unsupported quantization_config: {field} = {value!r} (Pagoda supports {supported!r})")


def parse_int4_config(qc: dict[str, Any]) -> Int4CheckpointConfig:
    method = qc.get("quant_method")
    bits = qc.get("bits", qc.get("w_bit"))
    if bits != 4:
        raise _unsupported("bits", bits, 4)
    group = qc.get("group_size", qc.get("q_group_size"))
    if group not in GROUP_SIZES:
        raise _unsupported("group_size", group, list(GROUP_SIZES))
    if method == "awq":
        if str(qc.get("version", "gemm")).lower() != "gemm":
            raise _unsupported("version", qc.get("version"), "gemm")
        if qc.get("zero_point", True) is not True:
            raise _unsupported("zero_point", qc.get("zero_point"), True)
        return Int4CheckpointConfig("awq", group)
    if qc.get("checkpoint_format", "gptq") != "gptq":
        raise _unsupported("checkpoint_format", qc.get("checkpoint_format"), "gptq")
    return Int4CheckpointConfig("gptq", group, bool(qc.get("desc_act", False)))


def _nibbles(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 tensor -> its eight 4-bit values each, expanded along ``dim`` (nibble i at 8 j + i)."""
    values = (packed.to(torch.int64).unsqueeze(dim + 1) >> SHIFTS.view([8 if d == dim + 1 else 1
                                                                        for d in range(packed.dim() + 1)])) & 15
    shape = list(packed.shape)
    shape[dim] *= 8
    return values.reshape(shape)


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> codes [in, out] and zeros [in / g, out] (int64, natural output order), scales float32 [in / g, out]."""
    reverse = torch.tensor([AWQ_ORDER.index(m) for m in range(8)])

    def natural(t: torch.Tensor) -> torch.Tensor:
        q = _nibbles(t, 1).view(t.shape[0], -1, 8)
        return q[:, :, reverse].reshape(t.shape[0], -1)

    return natural(qweight), natural(qzeros), scales.float()


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> codes [in, out] and zeros [in / g, out] (int64; the stored z - 1 plus one), scales float32."""
    return _nibbles(qweight, 0), _nibbles(qzeros, 1) + 1, scales.float()


def kernel_groups(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_of: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes [in, out], per-group zeros / scales [groups, out] and each input's group (inputs already in group
    order) -> the kernel's codes uint8 [out, in], scale and offset float32 [out, in / 32]."""
    first = group_of[::GROUP]  # the group of each run of 32 inputs
    if not torch.equal(group_of.view(-1, GROUP), first.unsqueeze(1).expand(-1, GROUP)):
        raise ValueError("a group of the checkpoint does not fill whole runs of 32 inputs")
    scale = scales[first]  # [in / 32, out]
    offset = -zeros[first].float() * scale
    return codes.t().to(torch.uint8).contiguous(), scale.t().contiguous(), offset.t().contiguous()


class Int4CheckpointLinear(Int4Linear):
    """An ``Int4Linear`` filled from AWQ / GPTQ tensors: its placeholder parameters (``qweight``, ``qzeros``,
    ``scales``, GPTQ's ``g_idx``) collect a part's tensors; once a part has all of them it is unpacked into the
    kernel's groups and written through the replaced layer's loader, like a GGUF part."""

    def __init__(self, base: LinearBase, dtype: torch.dtype, config: Int4CheckpointConfig) -> None:
        super().__init__(base, dtype)
        self.config = config
        self._row_parallel = isinstance(base, RowParallelLinear)
        self._pending: dict[object, dict[str, torch.Tensor]] = {}
        self.perm: torch.Tensor | None
        self.register_buffer("perm", None, persistent=False)  # act-order: the inputs in group order
        for name in config.tensor_names:
            dtype_of = torch.float32 if name == "scales" else torch.int32
            param = nn.Parameter(torch.empty(0, dtype=dtype_of), requires_grad=False)
            set_weight_loader(param, self._collector(name))
            self.register_parameter(name, param)

    def _collector(self, name: str) -> Callable[[nn.Parameter, torch.Tensor, object], None]:
        def collect(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
            part = self._pending.setdefault(shard_id, {})
            part[name] = loaded
            if len(part) == len(self.config.tensor_names):
                self._load_part(self._pending.pop(shard_id), shard_id)
        return collect

    def _load_part(self, t: dict[str, torch.Tensor], shard_id: object) -> None:
        if self.config.method == "awq":
            codes, zeros, scales = unpack_awq(t["qweight"], t["qzeros"], t["scales"])
            group_of = torch.arange(codes.shape[0]) // self.config.group_size
        else:
            codes, zeros, scales = unpack_gptq(t["qweight"], t["qzeros"], t["scales"])
            group_of = t["g_idx"].to(torch.int64)
            perm = torch.argsort(group_of, stable=True)
            if not torch.equal(perm, torch.arange(len(perm))):  # act-order: inputs sorted by group
                if self._row_parallel and self.tp.size > 1:
                    raise ValueError("GPTQ act-order (desc_act) on a row-parallel layer with tensor parallelism")
                if self.perm is not None and not torch.equal(self.perm, perm):
                    raise ValueError("the parts of a fused layer have different GPTQ act-order permutations")
                self.perm = perm
                codes, group_of = codes[perm], group_of[perm]
        q, scale, offset = kernel_groups(codes, zeros, scales, group_of)
        for staging, value in ((self._codes, q), (self._scale, scale), (self._offset, offset)):
            self.base_loader(nn.Parameter(staging, requires_grad=False), value, shard_id)
        self._shards.add(shard_id)

    def finalize(self) -> None:
        if self._pending:
            raise ValueError(f"the checkpoint lacks {self.config.method} tensors for parts {list(self._pending)}")
        super().finalize()
        for name in self.config.tensor_names:
            delattr(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return super().forward(x)


def swap_int4_checkpoint_linears(model: nn.Module, config: Int4CheckpointConfig, dtype: torch.dtype) -> int:
    """Before loading: every linear layer becomes an empty ``Int4CheckpointLinear``; returns how many."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LinearBase):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, Int4CheckpointLinear(module, dtype, config))
            swapped += 1
    return swapped
