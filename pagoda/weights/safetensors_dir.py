"""Hugging Face model directories: config.json and single or sharded safetensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_hf_config(model_dir: str) -> dict[str, Any]:
    """The directory's config.json as a dict."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    return json.loads(path.read_text(encoding="utf-8"))


def safetensors_files(model_dir: str) -> list[Path]:
    """The weight files: the shards an index names (in index order), or the single file."""
    root = Path(model_dir)
    if (root / INDEX_FILE).is_file():
        weight_map = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        return [root / name for name in dict.fromkeys(weight_map.values())]
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE]
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file")
    return shards


def iter_safetensors(model_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, read one at a time (memory-mapped files)."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
