"""POST /v1/embeddings: one pooling request per input, run through the engine's prefill (batched with
whatever else runs), pooled by ``--pooling`` (last token or mean) and L2-normalised by default."""

from __future__ import annotations

import base64
import struct
from contextlib import aclosing
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from pagoda.entrypoints.llm import normalized
from pagoda.sampling_params import SamplingParams
from pagoda.server.errors import APIError
from pagoda.server.openai_serving import ClientDisconnected, OpenAIServing, parse_body, until_disconnected
from pagoda.server.protocol import random_id


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    normalize: bool = True  # extension: False returns the raw pooled hidden state


class EmbeddingServing(OpenAIServing):
    async def create(self, raw: Request) -> Response:
        req = await parse_body(raw, EmbeddingRequest)
        self.check_model(req.model)
        if req.dimensions is not None:
            raise APIError(400, "dimensions: this model's embeddings cannot be shortened", param="dimensions")
        prompts = await self._prompt_ids(req)
        for ids in prompts:
            self.check_prompt_ids(ids, 1, "input")
        self.check_capacity(len(prompts))
        params = SamplingParams(max_tokens=1, pooling=self.config.pooling)
        try:
            body = await until_disconnected(raw, self._embed(req, prompts, params))
        except ClientDisconnected:
            return Response(status_code=499)
        return JSONResponse(body)

    async def _prompt_ids(self, req: EmbeddingRequest) -> list[list[int]]:
        x = req.input
        if isinstance(x, str):
            return [await self.encode(x)]
        if not x:
            raise APIError(400, "input is empty", param="input")
        if isinstance(x[0], int):
            return [list(x)]
        if isinstance(x[0], str):
            return [await self.encode(s) for s in x]
        return [list(ids) for ids in x]

    async def _embed(self, req: EmbeddingRequest, prompts: list[list[int]], params: SamplingParams) -> dict[str, Any]:
        vectors: dict[int, list[float]] = {}
        async with aclosing(self.run(random_id("embd"), prompts, params,
                                     lora_request=self.check_model(req.model))) as deltas:
            async for i, delta in deltas:
                if delta.embedding is not None:
                    vectors[i] = delta.embedding
        data = []
        for i in range(len(prompts)):
            v = normalized(vectors[i]) if req.normalize else vectors[i]
            encoded: Any = v
            if req.encoding_format == "base64":  # little-endian float32, as OpenAI sends them
                encoded = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        num_tokens = sum(len(p) for p in prompts)
        return {"object": "list", "data": data, "model": self.model.name,
                "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}
