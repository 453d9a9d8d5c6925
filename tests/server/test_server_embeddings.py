"""/v1/embeddings through the real `openai` client, against transformers' final hidden states."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from embedding_reference import reference_embeddings
from live_server import MODEL

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world!", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"]


@pytest.mark.parametrize("port,pooling", [("main", "last"), ("mean", "mean")])
def test_embeddings_equal_transformers(tools_server, tools_model_dir, port, pooling):
    client = tools_server.openai(port)
    r = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    refs = reference_embeddings(tools_model_dir, TEXTS, pooling, normalize=True)
    for d, ref in zip(r.data, refs, strict=True):
        torch.testing.assert_close(torch.tensor(d.embedding), ref, atol=1e-5, rtol=1e-5)
    assert r.usage.prompt_tokens == sum(tools_server.post("/tokenize", name=port, json={"prompt": t}).json()["count"]
                                        for t in TEXTS)
    # base64 (what the client asks for by default) decodes to the same float32 vectors
    b = tools_server.post("/v1/embeddings", name=port, json={"model": MODEL, "input": TEXTS,
                                                             "encoding_format": "base64"}).json()
    for d, ref in zip(b["data"], refs, strict=True):
        v = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        torch.testing.assert_close(torch.from_numpy(v.copy()), ref, atol=1e-5, rtol=1e-5)
    default = client.embeddings.create(model=MODEL, input=TEXTS[0])  # the client's default: base64
    torch.testing.assert_close(torch.tensor(default.data[0].embedding), refs[0], atol=1e-5, rtol=1e-5)


def test_token_input_and_raw_vectors(tools_server, tools_model_dir):
    ids = tools_server.post("/tokenize", json={"prompt": TEXTS[1]}).json()["tokens"]
    r = tools_server.post("/v1/embeddings", json={"model": MODEL, "input": [ids], "normalize": False}).json()
    (ref,) = reference_embeddings(tools_model_dir, TEXTS[1:2], "last", normalize=False)
    torch.testing.assert_close(torch.tensor(r["data"][0]["embedding"]), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("body,param", [({"dimensions": 8}, "dimensions"), ({"input": []}, "input"),
                                        ({"encoding_format": "int8"}, "encoding_format")])
def test_embedding_errors(tools_server, body, param):
    r = tools_server.post("/v1/embeddings", json={"model": MODEL, "input": "hi", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
