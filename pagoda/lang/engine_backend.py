"""Programs on an in-process engine: one driver thread steps the engine for every program thread."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future
from typing import Any

from pagoda.lang.backend import LangBackend
from pagoda.lang.expressions import Gen
from pagoda.outputs import RequestOutput
from pagoda.sampling_params import LogitsProcessor, SamplingParams
from pagoda.structured import GuidedDecodingParams, guided_logits_processor


class EngineBackend(LangBackend):
    """Wraps an ``LLM`` (or ``LLMEngine``). Program threads add requests under a lock; a daemon
    thread steps the engine while any are pending, so concurrent programs and forks decode in one
    batch and branches with a common prefix share its KV blocks through the prefix cache. Do not
    call ``llm.generate`` while programs run on the same engine."""

    def __init__(self, llm: Any) -> None:
        self.engine = getattr(llm, "engine", llm)
        self.tokenizer = self.engine.tokenizer
        self._cond = threading.Condition()
        self._pending: dict[str, Future[RequestOutput]] = {}
        self._ids = itertools.count()
        self._driver: threading.Thread | None = None

    # -- LangBackend --------------------------------------------------------------------
    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens) if text else []

    def generate(self, prompt_ids: list[int], gen: Gen) -> str:
        processors: list[LogitsProcessor] = []
        spec = _guided_spec(gen)
        if spec is not None:
            processors.append(guided_logits_processor(spec, self.tokenizer))  # compiled here, off the loop
        d = SamplingParams  # unset: its defaults (ProgramState fills both in before this)
        params = SamplingParams(max_tokens=gen.max_tokens, stop=gen.stop, seed=gen.seed, logits_processors=processors,
                                temperature=d.temperature if gen.temperature is None else gen.temperature,
                                top_p=d.top_p if gen.top_p is None else gen.top_p)
        out = self.submit(prompt_ids, params).result()
        return out.outputs[0].text

    def token_logprobs(self, prompts: list[list[int]]) -> list[list[float | None]]:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        # together: one batch. Each under its own cache salt: the engine computes prompt logprobs only
        # for positions it runs, and a prefix-cache hit would skip the shared ones.
        futures = [self.submit(ids, params, cache_salt=f"lang-score-{id(params)}-{i}") for i, ids in enumerate(prompts)]
        result: list[list[float | None]] = []
        for ids, future in zip(prompts, futures, strict=True):
            entries = future.result().prompt_logprobs or []
            if len(entries) != len(ids):
                raise RuntimeError(f"engine returned {len(entries)} prompt logprobs for {len(ids)} tokens")
            row: list[float | None] = [None]  # the first token has no logprob
            for i in range(1, len(ids)):
                entry = entries[i]
                row.append(entry[ids[i]].logprob if entry is not None else None)
            result.append(row)
        return result

    # -- the driver -----------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, cache_salt: str | None = None
               ) -> Future[RequestOutput]:
        """Queues one request (raising InvalidRequestError at once if it is invalid)."""
        future: Future[RequestOutput] = Future()
        with self._cond:
            request_id = f"lang-{next(self._ids)}"
            self.engine.add_request(request_id, prompt_ids, params, cache_salt=cache_salt)
            self._pending[request_id] = future
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive, name="pagoda-lang-engine", daemon=True)
                self._driver.start()
            self._cond.notify()
        return future

    def _drive(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # noqa: BLE001  (fail the waiting programs, keep the thread)
                    for future in self._pending.values():
                        future.set_exception(exc)
                    self.engine.abort_request(list(self._pending))
                    self._pending.clear()
                    continue
                for out in outputs:
                    if out.finished and out.request_id in self._pending:
                        future = self._pending.pop(out.request_id)
                        error = out.extra.get("error") if out.extra else None
                        if error:
                            future.set_exception(RuntimeError(error))
                        else:
                            future.set_result(out)


def _guided_spec(gen: Gen) -> GuidedDecodingParams | None:
    if gen.regex is not None:
        return GuidedDecodingParams(regex=gen.regex)
    if gen.json_schema is not None:
        return GuidedDecodingParams(json=gen.json_schema)
    if gen.choices is not None:
        return GuidedDecodingParams(choice=tuple(gen.choices))
    return None
