"""Sends one streaming request to an OpenAI-compatible server and times it, as `vllm bench serve` does.

TTFT is the time to the first chunk carrying text; ITL are the gaps between later text chunks;
the token counts come from the server's usage (``stream_options.include_usage``) when it
sends one, else one token per text chunk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from pagoda.bench.workloads import BenchRequest


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. http://127.0.0.1:8000 (with or without /v1)
    model: str
    api: str = "completions"  # "completions" | "chat"
    api_key: str | None = None
    ignore_eos: bool = True  # a Pagoda/vLLM extension; other servers may reject it
    temperature: float = 0.0

    @property
    def v1(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"

    @property
    def url(self) -> str:
        return self.v1 + ("/chat/completions" if self.api == "chat" else "/completions")


@dataclass
class RequestResult:
    prompt_len: int  # tokens, from the server's usage when available
    output_len: int
    start: float  # perf_counter() when the request was sent
    success: bool = False
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    text: str = ""
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1); undefined for one-token outputs."""
        return (self.e2e - self.ttft) / (self.output_len - 1) if self.output_len > 1 else None


def _payload(ep: Endpoint, req: BenchRequest) -> dict:
    body: dict = {"model": ep.model, "max_tokens": req.output_len, "temperature": ep.temperature, "stream": True,
                  "stream_options": {"include_usage": True}}
    if ep.ignore_eos:
        body["ignore_eos"] = True
    if ep.api == "chat":
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    return body


def _chunk_text(ep: Endpoint, choice: dict) -> str:
    if ep.api == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


async def send_request(http: httpx.AsyncClient, ep: Endpoint, req: BenchRequest) -> RequestResult:
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    start = time.perf_counter()
    result = RequestResult(prompt_len=req.prompt_len, output_len=0, start=start)
    num_chunks, usage = 0, None
    last = start
    parts: list[str] = []
    try:
        async with http.stream("POST", ep.url, json=_payload(ep, req), headers=headers) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message", chunk["error"]))
                    return result
                usage = chunk.get("usage") or usage
                text = "".join(_chunk_text(ep, c) for c in chunk.get("choices") or [])
                if not text:
                    continue
                now = time.perf_counter()
                if num_chunks == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                num_chunks += 1
                parts.append(text)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.e2e = time.perf_counter() - start
    result.text = "".join(parts)
    if usage:
        result.prompt_len = int(usage.get("prompt_tokens", req.prompt_len))
        result.output_len = int(usage.get("completion_tokens", num_chunks))
    else:
        result.output_len = num_chunks
    result.success = num_chunks > 0 or result.output_len > 0
    if not result.success:
        result.error = "no output"
    return result
