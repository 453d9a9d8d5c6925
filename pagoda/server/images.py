"""`POST /v1/images/generations`: OpenAI's image API on Pagoda's diffusion engine.

Usage (the server app includes the router):

    from pagoda.server.images import make_router
    app.include_router(make_router(pipeline))      # an ImagePipeline, or a local diffusers directory path

`make_router(pipeline_or_path) -> APIRouter` takes a `pagoda.diffusion.pipeline.ImagePipeline` (or a path,
loaded on first use; or an object with an `ImagePipeline` at `.pipeline`). Request: OpenAI's shape —
`prompt` (required), `n` (1–10), `size` ("WxH", multiples of the model's VAE factor), `response_format`
("b64_json" only; "url" is refused since nothing is hosted), `model` (accepted, informational) — plus the
extensions `sampler` (a preset name, default "UniPC AYS"), `steps` (1–200, default 10), `seed` (image k uses
seed + k; random when absent), `guidance_scale`, `negative_prompt`. Response: `{"created", "data":
[{"b64_json": <PNG>}]}`. Bad parameters get HTTP 400 with `{"error": {"message", "type", "param", "code"}}`.
Generation runs in a worker thread that hands the request to the pipeline's engine driver: the images of one
request, and of every concurrent request (whatever their samplers and step counts), share each model forward.
"""

from __future__ import annotations

import base64
import io
import random
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = None
    user: str | None = None
    sampler: str = "UniPC AYS"
    steps: int = Field(10, ge=1, le=200)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    negative_prompt: str = ""


def _error(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "internal_server_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _parse_size(size: str | None, factor: int) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like '512x512', got {size!r}") from None
    if not (factor <= w <= 2048 and factor <= h <= 2048) or w % factor or h % factor:
        raise ValueError(f"width and height must be multiples of {factor} between {factor} and 2048")
    return w, h


def _png_b64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_router(pipeline_or_path: Any) -> APIRouter:
    """An APIRouter serving POST /v1/images/generations with the given pipeline (see module docstring)."""
    from pagoda.diffusion.pipeline import GenerationOptions, ImagePipeline
    from pagoda.diffusion.presets import get_preset

    router = APIRouter()
    holder: dict[str, ImagePipeline] = {}

    def pipeline() -> ImagePipeline:
        if "p" not in holder:
            obj = pipeline_or_path
            if isinstance(obj, str):
                obj = ImagePipeline.from_pretrained(obj)
            obj = getattr(obj, "pipeline", obj)
            if not isinstance(obj, ImagePipeline):
                raise TypeError("make_router needs an ImagePipeline (or a diffusers directory path)")
            holder["p"] = obj
        return holder["p"]

    @router.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except Exception:
            return _error("request body must be JSON")
        if not isinstance(body, dict):
            return _error("request body must be a JSON object")
        try:
            req = ImageGenerationRequest.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ())) or None
            return _error(f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param=param)
        if req.response_format != "b64_json":
            return _error("only response_format 'b64_json' is supported", "response_format")
        try:
            get_preset(req.sampler)
        except ValueError as e:
            return _error(str(e), "sampler")
        pipe = await run_in_threadpool(pipeline)
        try:
            width, height = _parse_size(req.size, pipe.vae_scale_factor)
        except ValueError as e:
            return _error(str(e), "size")
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        options = GenerationOptions(req.sampler, req.steps, req.guidance_scale, height, width, req.negative_prompt)
        images = await run_in_threadpool(pipe.generate, [req.prompt] * req.n, [seed + k for k in range(req.n)],
                                         options)
        data = [{"b64_json": _png_b64(im), "revised_prompt": None} for im in images]
        return JSONResponse({"created": int(time.time()), "data": data})

    return router
