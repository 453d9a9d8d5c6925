"""Operations on [rows, vocab] tensors that the sampler runs every step: per-row values, row
selection, and reductions over blocks of the vocabulary (argmax, top-k, draws, mass and counts above
a level) that skip the blocks which cannot matter. torch's CPU kernels for these are scalar loops or
scan the whole row; blocks keep them vectorised and short."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def mass_above(probs: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Per row, the probability mass strictly above ``level`` [rows]. (threshold on probs / level
    keeps what exceeds 1: one fused pass, about twice as fast as a boolean mask.)"""
    level = level.clamp_min(torch.finfo(probs.dtype).tiny)
    per_block = per_block_above(probs, level, lambda x, lv: F.threshold(x / lv, 1.0, 0.0).sum(-1))
    return (per_block.double().sum(-1) * level).float()


def count_above(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Per row, how many entries of ``x`` are strictly above ``level`` [rows]."""
    return per_block_above(x, level, lambda x, lv: (x > lv).sum(-1, dtype=torch.int32)).sum(-1)


def per_block_above(x: torch.Tensor, level: torch.Tensor, reduce: Callable) -> torch.Tensor:
    """``reduce(blocks [r, m, size], level [r, 1, 1]) -> [r, m]`` for each row's blocks that may
    hold values above its level, zero for the others. Only blocks whose maximum exceeds the level
    can, and above a drawn token (usually among the most likely) they are few: rows where they are
    under half of the row reduce just those. Each block is reduced alone and the caller sums the
    blocks in float64, so a row's result does not depend on the other rows of the batch."""
    blocks = blocks_of(x, float("-inf"))
    block_max = blocks.amax(-1)
    num_over = (block_max > level[:, None]).sum(-1)
    few = 2 * num_over < block_max.shape[1]
    out = torch.zeros(block_max.shape, device=x.device, dtype=torch.float32 if x.is_floating_point() else torch.long)
    for rows, sparse in ((few.nonzero()[:, 0], True), ((~few).nonzero()[:, 0], False)):
        if len(rows) == 0:
            continue
        if sparse:  # the blocks with the largest maxima: all that exceed the level, and maybe others
            chosen = block_max[rows].topk(int(num_over[rows].max())).indices
            part = take_blocks(blocks, chosen, rows)
            out[rows[:, None], chosen] = reduce(part, level[rows][:, None, None]).to(out.dtype)
        else:
            part = blocks if len(rows) == x.shape[0] else blocks[rows]
            out[rows] = reduce(part, level[rows][:, None, None]).to(out.dtype)
    return out


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One inverse-CDF draw per row from unnormalised ``probs`` [rows, vocab] with ``u`` ~ U[0, 1)
    (float64, one per row). Two levels, a block of tokens then a token inside it, keep each running
    sum short, so rounding cannot swallow small probabilities as one float32 cumsum over the
    vocabulary would; a token of probability zero is never drawn."""
    n, vocab = probs.shape
    blocks = blocks_of(probs, 0.0)
    block_cum = blocks.sum(-1).double().cumsum(-1)
    target = u.clamp(max=1 - 1e-12)[:, None] * block_cum[:, -1:]  # < total, even after rounding
    b = torch.searchsorted(block_cum, target, right=True).clamp_max(block_cum.shape[1] - 1)
    start = torch.where(b > 0, block_cum.gather(1, (b - 1).clamp_min(0)), 0.0)
    frac = ((target - start) / (block_cum.gather(1, b) - start)).clamp(0, 1 - 1e-12)
    inner = take_blocks(blocks, b).squeeze(1).double().cumsum(-1)
    j = torch.searchsorted(inner, frac * inner[:, -1:], right=True).clamp_max(blocks.shape[2] - 1)
    return (b * blocks.shape[2] + j).squeeze(1).clamp_max(vocab - 1)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Row argmax (the first index of the maximum), as ``logits.argmax(-1)``. torch's CPU argmax is
    a scalar loop, ten times slower than the vectorised max of each block; so find the block
    holding the maximum, then the index inside it."""
    blocks = blocks_of(logits, float("-inf"))
    b = blocks.amax(-1).argmax(-1)
    return b * blocks.shape[2] + take_blocks(blocks, b[:, None]).squeeze(1).argmax(-1)


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k)`` per row (values descending, and their indices). Only the k blocks with the
    largest maxima can hold a row's k largest values, so when those blocks are a small part of the
    row, topk runs on them alone (it costs ~1 ns per element scanned)."""
    blocks = blocks_of(x, float("-inf"))
    num_blocks, size = blocks.shape[1:]
    if 2 * k > num_blocks:
        return x.topk(k)
    chosen = blocks.amax(-1).topk(k).indices
    values, pos = take_blocks(blocks, chosen).flatten(1).topk(k)
    return values, chosen.gather(1, pos // size) * size + pos % size


def blocks_of(x: torch.Tensor, pad_value: float) -> torch.Tensor:
    """``x`` [rows, n] as [rows, n / size, size]: a view when a power of two from 256 down to 32
    divides n, else padded with ``pad_value`` to a multiple of 256."""
    rows, n = x.shape
    for size in (256, 128, 64, 32):
        if n % size == 0:
            return x.reshape(rows, -1, size)
    return F.pad(x, (0, -n % 256), value=pad_value).view(rows, -1, 256)


def take_blocks(blocks: torch.Tensor, chosen: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``blocks`` [rows, n, size] at block indices ``chosen`` [r, m] of ``rows`` (all when None)
    -> [r, m, size]. (index_select on the flattened blocks is ~8x faster than gather.)"""
    num_rows, n, size = blocks.shape
    if rows is None:
        rows = torch.arange(num_rows, device=chosen.device)
    flat = chosen + n * rows[:, None]
    return blocks.reshape(num_rows * n, size).index_select(0, flat.view(-1)).view(len(rows), -1, size)


def per_row(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def row_index(rows: list[int], n: int) -> slice | list[int]:
    """An index for ``rows``: a plain slice (a view, no copy) when it is every row."""
    return slice(None) if len(rows) == n else rows
