"""Reference embeddings: transformers' final hidden states, pooled."""

from __future__ import annotations

import torch


def reference_embeddings(model_dir: str, texts: list[str], pooling: str, normalize: bool) -> list[torch.Tensor]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0]
        v = hidden[-1] if pooling == "last" else hidden.mean(0)
        out.append(torch.nn.functional.normalize(v, dim=0) if normalize else v)
    return out
