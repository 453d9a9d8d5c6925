"""A running program's state: the conversation so far, its variables, and an ordered queue of work."""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from pagoda.lang.backend import LangBackend
from pagoda.lang.expressions import ROLES, Concat, Gen, RoleBegin, RoleEnd, Select


class ProgramState:
    """``state += expr`` queues ``expr`` and returns at once; a worker thread per state runs the
    queue in order, so forks (and programs in ``run_batch``) generate concurrently and the backend
    batches them. Reading (``state["var"]``, ``text()``, ``messages()``) waits for the queue.

    Text outside any role is raw completion text; inside ``system``/``user``/``assistant`` it builds
    chat messages rendered by the model's chat template. ``gen``/``select`` run in raw text or in an
    open assistant turn.
    """

    def __init__(self, backend: LangBackend, defaults: Gen) -> None:
        self.backend = backend
        self.defaults = defaults  # gen fields a Gen leaves None
        self._messages: list[dict[str, str]] = []
        self._role: str | None = None
        self._text = ""  # raw text, or the open role's content so far
        self._vars: dict[str, Any] = {}
        self._scores: dict[str, list[float]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagoda-lang")
        self._last: Future[None] | None = None
        self._error: BaseException | None = None

    # -- building --------------------------------------------------------------------------
    def __iadd__(self, expr: Any) -> ProgramState:
        self._last = self._executor.submit(self._run, expr)
        return self

    def fork(self, n: int) -> Forks:
        """``n`` copies of this state (after its queue has run); they share the prefix's KV blocks."""
        self.sync()
        forks = Forks()
        for _ in range(n):
            child = ProgramState(self.backend, self.defaults)
            child._messages = [dict(m) for m in self._messages]
            child._role, child._text = self._role, self._text
            child._vars, child._scores = dict(self._vars), dict(self._scores)
            forks.append(child)
        return forks

    # -- reading ---------------------------------------------------------------------------
    def sync(self) -> ProgramState:
        if self._last is not None:
            self._last.result()
        if self._error is not None:
            raise self._error
        return self

    def __getitem__(self, name: str) -> Any:
        return self.sync()._vars[name]

    def get_var(self, name: str) -> Any:
        return self[name]

    def scores(self, name: str) -> list[float]:
        """A ``select``'s normalised log-likelihood of each option, in option order."""
        return self.sync()._scores[name]

    def messages(self) -> list[dict[str, str]]:
        self.sync()
        open_role = [{"role": self._role, "content": self._text}] if self._role else []
        return [dict(m) for m in self._messages] + open_role

    def text(self) -> str:
        """Raw text, or the assistant content of the last (or open) assistant turn."""
        self.sync()
        if not self._messages and self._role is None:
            return self._text
        return self.messages()[-1]["content"]

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    # -- the worker ------------------------------------------------------------------------
    def _run(self, expr: Any) -> None:
        if self._error is not None:
            return  # an earlier step failed: skip the rest, sync() raises it
        try:
            self._execute(expr)
        except BaseException as exc:  # noqa: BLE001  (kept for sync(), in the caller's thread)
            self._error = exc

    def _execute(self, expr: Any) -> None:
        if isinstance(expr, str):
            if self._role is None and self._messages:
                raise ValueError("text after chat messages must be inside a role")
            self._text += expr
        elif isinstance(expr, (list, tuple)):
            for part in expr:
                self._execute(part)
        elif isinstance(expr, Concat):
            for part in expr.parts:
                self._execute(part)
        elif isinstance(expr, RoleBegin):
            if expr.role not in ROLES:
                raise ValueError(f"unknown role {expr.role!r}")
            if self._role is not None:
                raise ValueError(f"{expr.role}() inside an open {self._role}() turn")
            if self._text:
                raise ValueError("raw text and chat roles cannot be mixed")
            self._role = expr.role
        elif isinstance(expr, RoleEnd):
            self._messages.append({"role": expr.role, "content": self._text})
            self._role, self._text = None, ""
        elif isinstance(expr, Gen):
            self._gen(expr)
        elif isinstance(expr, Select):
            self._select(expr)
        else:
            raise TypeError(f"cannot append {type(expr).__name__} to a program state")

    def _prefix_ids(self) -> tuple[list[int], bool]:
        """Token ids before the open text, and whether the open text is chat content."""
        if self._role is None:
            return [], False
        if self._role != "assistant":
            raise ValueError(f"gen/select inside {self._role}(): only assistant turns or raw text generate")
        return self.backend.chat_ids(self._messages, add_generation_prompt=True), True

    def _gen(self, gen: Gen) -> None:
        prefix, chat = self._prefix_ids()
        d = self.defaults
        resolved = replace(
            gen,
            max_tokens=gen.max_tokens if gen.max_tokens is not None else d.max_tokens,
            stop=gen.stop if gen.stop is not None else d.stop,
            temperature=gen.temperature if gen.temperature is not None else d.temperature,
            top_p=gen.top_p if gen.top_p is not None else d.top_p,
            seed=gen.seed if gen.seed is not None else d.seed)
        ids = prefix + self.backend.encode(self._text, add_special_tokens=not chat)
        text = self.backend.generate(ids, resolved)
        self._text += text
        if gen.name is not None:
            self._vars[gen.name] = text

    def _select(self, sel: Select) -> None:
        prefix, chat = self._prefix_ids()
        head = self.backend.encode(self._text, add_special_tokens=not chat)
        prompts, starts = [], []
        for option in sel.choices:
            full = self.backend.encode(self._text + option, add_special_tokens=not chat)
            k = _common_prefix(head, full)  # the option's tokens may merge with the text's last ones
            prompts.append(prefix + full)
            starts.append(len(prefix) + max(k, 1))
        logprobs = self.backend.token_logprobs(prompts)
        scores = []
        for lps, start in zip(logprobs, starts, strict=True):
            kept = [lp for lp in lps[start:] if lp is not None]
            scores.append(sum(kept) / len(kept) if kept else -math.inf)
        best = max(range(len(scores)), key=scores.__getitem__)
        self._text += sel.choices[best]
        if sel.name is not None:
            self._vars[sel.name] = sel.choices[best]
            self._scores[sel.name] = scores


class Forks(list):
    """The states ``fork`` returns; ``join()`` waits for all of them."""

    def join(self) -> Forks:
        for state in self:
            state.sync()
        return self


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
