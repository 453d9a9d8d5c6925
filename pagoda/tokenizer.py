"""Text <-> token ids, special tokens and chat templates, on a `tokenizers` fast tokenizer.

Two sources: a Hugging Face directory (tokenizer.json + tokenizer_config.json + ...), read here,
and a GGUF file's metadata (``pagoda.weights.gguf_tokenizer.tokenizer_from_gguf``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, overload

from tokenizers import Tokenizer as FastTokenizer
from tokenizers import models

from pagoda.chat_template import render_chat_template

_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    """A fast tokenizer plus what serving needs around it: special ids, eos set, chat template."""

    def __init__(self, backend: FastTokenizer, *, special_tokens: dict[str, str | None] | None = None,
                 extra_eos_token_ids: tuple[int, ...] = (), chat_template: str | None = None,
                 clean_up_tokenization_spaces: bool = False) -> None:
        """`special_tokens` maps names like "bos_token" to token strings (the chat template sees them;
        None entries are dropped)."""
        self.backend = backend
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template
        self._clean_up = clean_up_tokenization_spaces and not isinstance(backend.model, models.BPE)
        self.bos_token_id = self._id_of("bos_token")
        self.eos_token_id = self._id_of("eos_token")
        self.pad_token_id = self._id_of("pad_token")
        self.unk_token_id = self._id_of("unk_token")
        eos = {self.eos_token_id} if self.eos_token_id is not None else set()
        self.eos_token_ids: frozenset[int] = frozenset(eos | set(extra_eos_token_ids))
        named = {i for i in map(self._id_of, self.special_tokens) if i is not None}
        added = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.all_special_ids: list[int] = sorted(named | added)

    def _id_of(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_dir: str) -> Tokenizer:
        """From a Hugging Face model directory (its tokenizer.json, tokenizer_config.json,
        special_tokens_map.json, chat_template.jinja and generation_config.json)."""
        root = Path(model_dir)
        if not (root / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json (only fast tokenizers are supported; "
                                    "save one with transformers' tokenizer.save_pretrained)")
        # Its post-processor alone decides what bos/eos encode() adds (transformers 5 ignores
        # tokenizer_config's add_bos_token once there is a tokenizer.json).
        backend = FastTokenizer.from_file(str(root / "tokenizer.json"))
        config = _read_json(root / "tokenizer_config.json")
        special = {k: _token_content(v) for k, v in _read_json(root / "special_tokens_map.json").items()
                   if k in _NAMED_SPECIAL}
        special.update({k: _token_content(config[k]) for k in _NAMED_SPECIAL if config.get(k) is not None})
        eos = _read_json(root / "generation_config.json").get("eos_token_id")
        extra_eos = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ()
        return cls(backend, special_tokens=special, extra_eos_token_ids=extra_eos,
                   chat_template=_read_chat_template(root, config),
                   clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)))

    def save_pretrained(self, model_dir: str) -> None:
        """Writes tokenizer.json and tokenizer_config.json (special tokens, chat template) into
        ``model_dir``, which ``from_pretrained`` reads back (e.g. a GGUF's tokenizer for an HF-format
        model directory)."""
        root = Path(model_dir)
        self.backend.save(str(root / "tokenizer.json"))
        config = dict(self.special_tokens, chat_template=self.chat_template)
        (root / "tokenizer_config.json").write_text(json.dumps(config, indent=1))

    # ---- encode / decode ------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; `add_special_tokens` adds bos/eos only where the model's config asks for them."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up else text

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (transformers' `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    # ---- chat -----------------------------------------------------------------------------

    @overload
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = ...,
                            tokenize: Literal[False] = ..., *, tools: list[dict] | None = ...,
                            documents: list[dict] | None = ..., chat_template: str | None = ...,
                            **kwargs: Any) -> str: ...

    @overload
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = ...,
                            *, tokenize: Literal[True], tools: list[dict] | None = ...,
                            documents: list[dict] | None = ..., chat_template: str | None = ...,
                            **kwargs: Any) -> list[int]: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, *, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            **kwargs: Any) -> str | list[int]:
        """Render a conversation exactly as transformers' `apply_chat_template` does.

        Extra keyword arguments become template variables (e.g. `enable_thinking=False`).
        With `tokenize=True` the ids of the rendered text come back (no bos/eos added: the
        template writes those itself).
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template; pass chat_template=...")
        variables = {**self.special_tokens, **kwargs}
        text = render_chat_template(template, messages, tools=tools, documents=documents,
                                    add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text


# ---- Hugging Face directory helpers ---------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _read_chat_template(root: Path, config: dict[str, Any]) -> str | None:
    # transformers 5 saves it as chat_template.jinja; older versions inside tokenizer_config.json.
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template") or _read_json(root / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    return template


def _clean_up_tokenization(text: str) -> str:
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


