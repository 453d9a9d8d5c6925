"""The offline API: ``LLM(...).generate(prompts, params)`` and ``.chat(conversations, params)``."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, cast

from tqdm import tqdm

from pagoda.engine.args import EngineArgs
from pagoda.engine.engine_factory import build_engine
from pagoda.lora.request import LoRARequest
from pagoda.outputs import RequestOutput
from pagoda.sampling_params import SamplingParams
from pagoda.tokenizer import Tokenizer

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """An engine in this process, vLLM-shaped.

    ``LLM()`` loads the bundled SmolLM2-135M-Instruct; ``LLM(model=path, **options)`` a Hugging Face
    directory or a GGUF file, with the options of ``EngineArgs`` (dtype, max_model_len,
    kv_cache_memory_gb, max_num_seqs, max_num_batched_tokens, batching, ...).

    ``shutdown()``, or leaving ``with LLM(...) as llm:``, stops a parallel engine's worker ranks,
    leaves the process group, frees the KV cache and removes temp folders, so that another engine
    of any layout can be built in this process; dropping the object does the same when it is
    collected.
    """

    def __init__(self, model: str | None = None, **options: Any) -> None:
        self.engine = build_engine(EngineArgs(model=model, **options))
        self._ids = itertools.count()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Releases the engine (idempotent); generating afterwards raises."""
        self.engine.shutdown()

    def get_tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: SamplingParams |
                 Sequence[SamplingParams] | None = None, use_tqdm: bool = True,
                 lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None) -> list[RequestOutput]:
        """Generates for every prompt (a string or a list of token ids); outputs in input order.
        ``lora_request``: one adapter for every prompt, or one (or None) per prompt (needs
        ``LLM(enable_lora=True)``).

        Invalid input raises ``InvalidRequestError`` before anything runs.
        """
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        params = _per_prompt(sampling_params, len(prompts))
        loras = _per_prompt_lora(lora_request, len(prompts))
        request_ids = []
        try:
            for prompt, p, lora in zip(prompts, params, loras, strict=True):
                request_id = f"llm-{next(self._ids)}"
                self.engine.add_request(request_id, prompt, p, lora_request=lora)
                request_ids.append(request_id)
        except Exception:
            self.engine.abort_request(request_ids)
            raise
        return self._run(request_ids, use_tqdm)

    def chat(self, messages: list[Message] | Sequence[list[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, use_tqdm: bool = True,
             add_generation_prompt: bool = True, chat_template_kwargs: dict[str, Any] | None = None
             ) -> list[RequestOutput]:
        """Applies the model's chat template to one conversation or a list of them, then generates."""
        conversations = cast(list[list[Message]], [messages] if messages and isinstance(messages[0], dict)
                             else list(messages))
        tokenizer = self.engine.tokenizer
        texts = [tokenizer.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=False,
                                               **(chat_template_kwargs or {})) for conv in conversations]
        prompts: list[Prompt] = [tokenizer.encode(cast(str, text), add_special_tokens=False) for text in texts]
        return self.generate(prompts, sampling_params, use_tqdm)

    def embed(self, texts: Prompt | Sequence[Prompt], pooling: str = "last", normalize: bool = True,
              use_tqdm: bool = True) -> list[list[float]]:
        """One embedding per text (a string or token ids): the final hidden state of the last prompt
        token ("last") or the mean over the prompt ("mean"), L2-normalised unless ``normalize=False``.
        The prompts' prefills batch with everything else the engine runs."""
        outputs = self.generate(texts, SamplingParams(max_tokens=1, pooling=pooling), use_tqdm)
        return [normalized(o.extra["embedding"]) if normalize else o.extra["embedding"] for o in outputs]

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Generating", unit=" req",
                   disable=not use_tqdm or len(request_ids) < 8)
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        bar.update(1)
        except BaseException:
            self.engine.abort_request(request_ids)
            raise
        finally:
            bar.close()
        return [finished[r] for r in request_ids]


def normalized(vector: list[float]) -> list[float]:
    """``vector`` over its L2 norm (unchanged when it is zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def _per_prompt_lora(lora: LoRARequest | Sequence[LoRARequest | None] | None, n: int
                     ) -> list[LoRARequest | None]:
    if lora is None or isinstance(lora, LoRARequest):
        return [lora] * n
    loras = list(lora)
    if len(loras) != n:
        raise ValueError(f"got {len(loras)} LoRA requests for {n} prompts")
    return loras


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    return params
