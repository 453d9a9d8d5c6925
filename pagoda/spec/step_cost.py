"""What a decoding step costs, by its number of generated rows: measured on the engine's own steps.

On a CPU the cost of a step is not ``a + b * rows``: quantized matmul kernels work in tiles of
rows, so the cost rises in steps (torch's int4 kernel on the default model: about the same time
for 1-4 rows, then a jump at 5 and another at 9). Where the steps lie depends on the model, the
kernel and the device, so they are measured, not assumed: every step whose rows are all generated
rows (decode, verification of proposals, jump-forward tokens; no prompt rows, which run other
kernels) reports its wall time under its number of rows, into a decayed mean per bucket of row
counts. Learning online rather than calibrating at start costs nothing at start, follows the
machine's load and the growing contexts, and sees the whole step (sampling and verification
included) as the engine runs it.

Until a row count has been measured its cost is read off the nearest measured ones: between two
measured buckets linearly, beyond them along the linear prior ``overhead_rows + rows`` scaled to the
nearest measurement (with nothing measured, the prior alone: the policy of a fixed linear model).
Estimates never fall as rows grow.
"""

from __future__ import annotations

import bisect

COST_DECAY = 0.9  # weight of the past per measured step: a bucket follows its last few dozen steps
OUTLIER_FACTOR = 3.0  # a step slower than this many times its bucket's mean counts as this much (a hiccup)
EXACT_ROWS = 32  # up to here each row count is its own bucket; above, 8 buckets per doubling


def bucket(rows: int) -> int:
    """The bucket a step of ``rows`` generated rows is measured in (its largest row count)."""
    if rows <= EXACT_ROWS:
        return rows
    width = 1 << (rows.bit_length() - 4)
    return -(-rows // width) * width


class StepCost:
    """Estimated seconds of a step by its number of generated rows; ``record`` teaches it a real step."""

    def __init__(self, overhead_rows: float, learn: bool = True) -> None:
        self.overhead_rows = overhead_rows
        self.learn = learn
        self._mean: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._keys: list[int] = []  # measured buckets, sorted

    def record(self, rows: int, seconds: float) -> None:
        if not self.learn or rows <= 0 or seconds <= 0:
            return
        key = bucket(rows)
        n = self._count.get(key, 0) + 1
        self._count[key] = n
        if n == 1:
            self._mean[key] = seconds
            bisect.insort(self._keys, key)
            return
        mean = self._mean[key]
        seconds = min(seconds, OUTLIER_FACTOR * mean)
        self._mean[key] = mean + max(1 / n, 1 - COST_DECAY) * (seconds - mean)

    def measured(self, rows: int) -> float | None:
        """The decayed mean of the bucket of ``rows``, if it has been measured."""
        return self._mean.get(bucket(rows))

    def estimate(self, rows: int) -> float:
        """The estimated cost of one step of ``rows`` generated rows (seconds once anything is measured;
        in units of one row's work before)."""
        if not self._keys:
            return self.overhead_rows + rows
        key = bucket(rows)
        mean = self._mean.get(key)
        if mean is not None:
            return mean
        i = bisect.bisect_left(self._keys, key)
        if 0 < i < len(self._keys):
            lo, hi = self._keys[i - 1], self._keys[i]
            return self._mean[lo] + (self._mean[hi] - self._mean[lo]) * (rows - lo) / (hi - lo)
        near = self._keys[i - 1] if i else self._keys[0]
        return self._mean[near] * (self.overhead_rows + rows) / (self.overhead_rows + near)

    def estimates(self, first: int, last: int) -> list[float]:
        """``estimate(r)`` for r = first .. last, made non-decreasing in r (more rows never cost less:
        a noisy bucket must not lure the policy into more rows)."""
        out: list[float] = []
        top = 0.0
        for r in range(first, last + 1):
            top = max(top, self.estimate(r))
            out.append(top)
        return out
