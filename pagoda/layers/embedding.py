"""Vocab-parallel token embedding and LM head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import set_weight_loader
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
    """Hidden states -> float32 logits over the full vocabulary (gathered across ranks).

    Accumulated in float32 and never rounded to the model dtype: in bfloat16 a logit near 20 is
    only good to 0.125, enough to tie the top two tokens. On CPU, Pagoda's fixed-order kernel
    takes the float32 hidden states against the weight as stored (each bfloat16 weight widened
    exactly), so a row's logits do not depend on the other rows either.
    """

    def prepack(self) -> None:
        pass  # the weight stays as stored: it may be tied, and the kernel reads it in place

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() == 2 and hidden.is_cpu and hidden.shape[1] % 32 == 0 and cpu_kernels.invariant_linear_available():
            logits = torch.ops.pagoda.invariant_linear(hidden.float().contiguous(), self.weight, _NONE, _NONE,
                                                       self.weight.shape[0], torch.float32)
        else:
            logits = F.linear(hidden.float(), self.weight.float())
        logits = self.tp.all_gather_last_dim(logits)
        return logits[..., : self.vocab_size]


_NONE = torch.empty(0)
