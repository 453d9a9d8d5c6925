"""Programs against a running Pagoda server (OpenAI-compatible, with Pagoda's extensions)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from pagoda.lang.backend import LangBackend
from pagoda.lang.expressions import Gen


class ServerBackend(LangBackend):
    """Uses ``/tokenize`` (chat template and text, the server's own tokenizer), ``/v1/completions``
    with token-id prompts and the ``guided_regex`` / ``guided_json`` / ``guided_choice`` extensions,
    and ``echo`` + ``logprobs`` for prompt log-probabilities. Concurrent programs make concurrent
    HTTP requests, which the server batches."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0,
                 model: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.model = model

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.model is not None:
            body = {"model": self.model, **body}
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} -> {response.status_code}: {response.text[:500]}")
        return response.json()

    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        return self._post("/tokenize", {"messages": messages, "add_generation_prompt": add_generation_prompt,
                                        "add_special_tokens": False})["tokens"]

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if not text:
            return []
        return self._post("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})["tokens"]

    def generate(self, prompt_ids: list[int], gen: Gen) -> str:
        body: dict[str, Any] = {"prompt": prompt_ids, "max_tokens": gen.max_tokens, "temperature": gen.temperature,
                                "top_p": gen.top_p, "stop": gen.stop, "seed": gen.seed}
        if gen.regex is not None:
            body["guided_regex"] = gen.regex
        elif gen.json_schema is not None:
            body["guided_json"] = gen.json_schema
        elif gen.choices is not None:
            body["guided_choice"] = gen.choices
        body = {k: v for k, v in body.items() if v is not None}
        return self._post("/v1/completions", body)["choices"][0]["text"]

    def token_logprobs(self, prompts: list[list[int]]) -> list[list[float | None]]:
        # One request per prompt, each under its own cache salt: the engine computes prompt logprobs
        # only for positions it runs, and a prefix-cache hit would skip the shared ones.
        def one(ids: list[int]) -> list[float | None]:
            out = self._post("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "echo": True,
                                                 "logprobs": 0, "cache_salt": f"lang-score-{uuid.uuid4().hex}"})
            # echo: the prompt's tokens come first (the first has no logprob), then the generated one
            return out["choices"][0]["logprobs"]["token_logprobs"][:len(ids)]

        with ThreadPoolExecutor(max_workers=min(8, len(prompts))) as pool:
            return list(pool.map(one, prompts))
