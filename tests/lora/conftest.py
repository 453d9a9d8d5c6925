from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from adapters import VARIANTS, make_adapter  # noqa: E402


@pytest.fixture(scope="session")
def lora_adapters(tiny_llama_dir, tmp_path_factory) -> dict[str, str]:
    """The three peft adapters of ``VARIANTS`` for the tiny Llama: name -> directory."""
    root = tmp_path_factory.mktemp("lora")
    return {name: make_adapter(tiny_llama_dir, str(root / name), seed=i + 1, **options)
            for i, (name, options) in enumerate(VARIANTS.items())}
