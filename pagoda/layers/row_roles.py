"""Which rows of a step's flat token batch are prompt tokens and which are generated ones.

Under the default numerics (not ``deterministic``) a GGUF 4-bit linear layer picks its kernel per
row by the row's role, never by what else is in the step: prompt rows always go through oneDNN's
bfloat16 GEMM on a dequantized copy (it gives a row the same bits at every row count), generated
rows through torch's packed int4 kernel while a step has few of them (the fastest for decode) and
oneDNN above. A token's role follows from its position alone (before or after its request's
prompt length), so a prompt gives the same KV whether computed whole, in chunks or after a prefix
hit, and a request decoding alone gives the same tokens every time.

The model sets the step's roles around its forward (``active``); layers read them (``current``).
Without roles (a layer called on its own) every row counts as a prompt row.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowRoles:
    """Per sequence of the step, how many of its new tokens (its first ones) are prompt tokens."""

    query_start_loc: tuple[int, ...]  # [num_seqs + 1] offsets of each sequence's rows
    num_prompt_rows: tuple[int, ...]  # [num_seqs]

    @property
    def num_rows(self) -> int:
        return self.query_start_loc[-1]

    @functools.cached_property
    def num_prompt(self) -> int:
        return sum(self.num_prompt_rows)

    @functools.cached_property
    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices of the prompt rows, indices of the generated rows), ascending."""
        prompt: list[int] = []
        generated: list[int] = []
        for i, n in enumerate(self.num_prompt_rows):
            start, end = self.query_start_loc[i], self.query_start_loc[i + 1]
            prompt.extend(range(start, start + n))
            generated.extend(range(start + n, end))
        return torch.tensor(prompt, dtype=torch.int64), torch.tensor(generated, dtype=torch.int64)


_current: RowRoles | None = None


def current() -> RowRoles | None:
    return _current


@contextmanager
def active(roles: RowRoles | None) -> Iterator[None]:
    global _current
    previous, _current = _current, roles
    try:
        yield
    finally:
        _current = previous
