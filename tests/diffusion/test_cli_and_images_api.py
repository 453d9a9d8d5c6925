"""`pagoda image` and POST /v1/images/generations on a tiny random pipeline, via the real openai client."""

from __future__ import annotations

import argparse
import base64
import io

import numpy as np
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from pagoda.cli import image as image_cli
from pagoda.diffusion.pipeline import ImagePipeline
from pagoda.diffusion.tiny import build_tiny_text_to_image
from pagoda.server.images import make_router


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> str:
    return build_tiny_text_to_image(str(tmp_path_factory.mktemp("tiny-sd-api")), seed=5)


@pytest.fixture(scope="module")
def client(sd_dir):
    app = FastAPI()
    app.include_router(make_router(ImagePipeline.from_pretrained(sd_dir)))
    with TestClient(app) as http:
        yield http


def test_cli_writes_a_grid(sd_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    image_cli.add_arguments(parser)
    out = tmp_path / "grid.png"
    args = parser.parse_args(["a fox", "--model", sd_dir, "--sampler", "UniPC AYS", "--steps", "4", "--n", "5",
                              "-o", str(out)])
    assert image_cli.run(args) == 0
    grid = Image.open(out)
    assert grid.size == (3 * 16, 2 * 16)  # 5 images of 16x16 on a 3-column grid
    assert "4 steps, 4 model forwards" in capsys.readouterr().out
    bad = parser.parse_args(["x", "--model", sd_dir, "--sampler", "Nope"])
    assert image_cli.run(bad) == 2


def test_openai_client_generates_pngs(client):
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    res = oai.images.generate(prompt="a red apple", n=2, size="16x16", response_format="b64_json",
                              extra_body={"sampler": "DDIM Trailing", "steps": 3, "seed": 42})
    assert len(res.data) == 2
    imgs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in res.data]
    assert imgs[0].shape == (16, 16, 3) and not np.array_equal(imgs[0], imgs[1])  # seeds 42 and 43
    again = oai.images.generate(prompt="a red apple", n=1, size="16x16", response_format="b64_json",
                                extra_body={"sampler": "DDIM Trailing", "steps": 3, "seed": 42})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(again.data[0].b64_json)))), imgs[0])


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "sampler": "Heun Magic"}, "sampler"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "n": 11}, "n"),
    ({"prompt": "x", "size": "15x16"}, "size"),
    ({"prompt": "x", "size": "big"}, "size"),
    ({"prompt": "x", "response_format": "url"}, "response_format"),
    ({"n": 1}, "prompt"),
    ({"prompt": "x", "seed": -1}, "seed"),
])
def test_bad_parameters_are_400_with_openai_error_body(client, body, param):
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_openai_client_raises_bad_request(client):
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        oai.images.generate(prompt="x", extra_body={"sampler": "nope"})
