"""A constraint that crosses a process boundary as its spec and becomes a processor on the far side.

The server validates (compiles) a spec in its HTTP process, where a bad one is a 400, and sends
the engine process only the picklable spec; the engine process binds it to its own tokenizer.
Compiling there runs on a background thread; the scheduler leaves the request waiting until its
grammar is ready (``GuidedLogitsProcessor.ready``) and steps the others meanwhile, so a slow compile
delays its own request only (a spec compiled before is a cache hit).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from pagoda.sampling_params import SamplingParams
from pagoda.structured.compile_executor import CompileExecutor
from pagoda.structured.grammar_compiler import compiler_for
from pagoda.structured.guided_decoding_params import GuidedDecodingParams
from pagoda.structured.guided_logits_processor import GuidedLogitsProcessor
from pagoda.tokenizer import Tokenizer

# deep stacks (see compile_executor); two threads, so one slow spec does not hold every other behind it
_compile_pool = CompileExecutor(2, "pagoda-grammar-compile")


@dataclass(frozen=True)
class DeferredGuidedProcessor:
    """Stands in a SamplingParams' logits_processors until ``bind_deferred_processors`` replaces it."""

    spec: GuidedDecodingParams
    jump_forward: bool = True
    budget_steering: bool = True  # close the grammar before max_tokens runs out

    def __call__(self, output_token_ids: Sequence[int], logits: Any) -> Any:
        raise RuntimeError("a deferred guided-decoding processor was not bound to a tokenizer "
                           "(call pagoda.structured.bind_deferred_processors where the engine runs)")


def bind_deferred_processors(params: SamplingParams, tokenizer: Tokenizer) -> SamplingParams:
    """``params`` with every DeferredGuidedProcessor replaced by a live processor for ``tokenizer``."""
    if not any(isinstance(p, DeferredGuidedProcessor) for p in params.logits_processors):
        return params
    bound = []
    for p in params.logits_processors:
        if isinstance(p, DeferredGuidedProcessor):
            compiler = compiler_for(tokenizer)
            compiled: Future = _compile_pool.submit(compiler.compile, p.spec)
            steer = p.budget_steering and params.max_tokens is not None
            p = GuidedLogitsProcessor(compiled, _eos(tokenizer), jump_forward=p.jump_forward,
                                      max_tokens=params.max_tokens if steer else None,
                                      closing_tokens=compiler.closing_tokens() if steer else ())
        bound.append(p)
    return replace(params, logits_processors=bound)


def _eos(tokenizer: Tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("constrained decoding needs a tokenizer with an eos token")
    return tokenizer.eos_token_id
