"""Vocab-parallel token embedding and LM head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import set_weight_loader
from pagoda.layers.prepacked import linear, prepack_weight
from pagoda.parallel import SINGLE, TensorParallel


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.shard_size = -(-vocab_size // tp.size)  # ceil: the last shard may be padded
        self.start = tp.rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size), requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        part = loaded[self.start:self.start + self.shard_size]
        param.data.zero_()
        param.data[: part.shape[0]].copy_(part)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        # rows outside this rank's slice contribute zeros; the all-reduce assembles the full embedding
        local = input_ids - self.start
        mask = (local < 0) | (local >= self.shard_size)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out.masked_fill_(mask.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states -> logits over the full vocabulary (gathered across ranks).

    The biggest matrix of a small model and read whole at every step: on CPU in bfloat16 it is
    reordered once into oneDNN's blocked layout, which halves its cost for small batches; for one
    or two rows Pagoda's own dot-product kernel streams it at memory speed (2.1 vs 2.7 ms for
    SmolLM2's 49152 x 576 on 2 cores).
    """

    packed: torch.Tensor | None = None

    def prepack(self) -> None:
        self.packed = prepack_weight(self.weight, batch_hint=1)  # the weight stays: it may be tied

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() == 2 and hidden.shape[0] <= 2 and hidden.shape[1] % 16 == 0 and self.packed is not None \
                and cpu_kernels.available():
            # one or two rows stream the whole matrix: a plain dot-product kernel runs at memory speed
            logits = torch.ops.pagoda.gemv_bf16(hidden, self.weight)
        else:
            logits = linear(hidden, self.weight, None, self.packed)
        logits = self.tp.all_gather_last_dim(logits)
        return logits[..., : self.vocab_size]
