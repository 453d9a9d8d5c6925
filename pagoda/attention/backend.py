"""The attention backend contract (implementations are chosen by name in ``registry``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pagoda.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    """Paged attention over block tables.

    Contract of ``forward``: first write the new tokens' ``k``/``v`` into ``k_cache``/``v_cache`` at
    ``metadata.slot_mapping``; then, for every sequence, attend its new queries causally over all
    of its context (cached tokens plus the new ones), reading K/V only through its block table.
    Shapes: q [T, Hq, D], k/v [T, Hkv, D], each cache as ``kv_cache_shape`` says (the layout is
    the backend's choice); returns [T, Hq, D]. Hq must be a multiple of Hkv (grouped-query
    attention). No padding between sequences: the batch is flat.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    @staticmethod
    @abstractmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        """Shape of one layer's K (and V) cache tensor."""

    @staticmethod
    @abstractmethod
    def copy_blocks(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copies whole blocks ``src[i] -> dst[i]`` in every layer (copy-on-write)."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor: ...
