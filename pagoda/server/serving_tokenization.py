"""POST /tokenize and /detokenize (vLLM's extensions): the server's own tokenizer and chat template."""

from __future__ import annotations

from fastapi import Request

from pagoda.server.errors import APIError
from pagoda.server.openai_serving import parse_body
from pagoda.server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from pagoda.server.serving_chat import ChatServing


class TokenizationServing(ChatServing):
    async def tokenize(self, raw: Request) -> TokenizeResponse:
        req = await parse_body(raw, TokenizeRequest)
        self.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        if req.messages is not None:
            ids = await self.render(req.messages, req.add_generation_prompt)
        else:
            ids = await self.encode(req.prompt or "", req.add_special_tokens)
        return TokenizeResponse(count=len(ids), max_model_len=self.model.max_model_len, tokens=ids)

    async def detokenize(self, raw: Request) -> DetokenizeResponse:
        req = await parse_body(raw, DetokenizeRequest)
        self.check_model(req.model)
        bad = next((t for t in req.tokens if not 0 <= t < self.model.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is out of range [0, {self.model.vocab_size})", param="tokens")
        return DetokenizeResponse(prompt=self.tokenizer.decode(req.tokens, skip_special_tokens=False))
