"""The logits-processor hooks are protocols: grammar processors provide all of them, the engine's
guard keeps draw verification only where the wrapped mask has it, a plain function is a processor."""

from __future__ import annotations

from concurrent.futures import Future

from pagoda.engine.guarded_processors import guarded_processors
from pagoda.logits_processor import CloneableProcessor, DrawVerifier, LogitsProcessor, TokenForcer
from pagoda.sample.sampler import checks_after_draw
from pagoda.sampling_params import SamplingParams
from pagoda.structured.guided_logits_processor import GuidedLogitsProcessor


def _identity(token_ids, logits):
    return logits


def test_guided_processor_implements_every_hook():
    guided = GuidedLogitsProcessor(Future(), eos_token_id=0)  # compiles lazily: nothing runs here
    for hook in (LogitsProcessor, DrawVerifier, TokenForcer, CloneableProcessor):
        assert isinstance(guided, hook), hook
    assert isinstance(guided.clone(), GuidedLogitsProcessor) and guided.clone() is not guided


def test_plain_functions_and_guards():
    assert isinstance(_identity, LogitsProcessor)
    assert not isinstance(_identity, (DrawVerifier, TokenForcer, CloneableProcessor))
    masked = SamplingParams(temperature=0, logits_processors=[GuidedLogitsProcessor(Future(), eos_token_id=0)])
    plain = SamplingParams(temperature=0, logits_processors=[_identity])
    assert checks_after_draw(masked) and not checks_after_draw(plain)
    failed: dict[str, str] = {}
    assert isinstance(guarded_processors("a", masked, failed), DrawVerifier)
    assert not isinstance(guarded_processors("b", plain, failed), DrawVerifier)
