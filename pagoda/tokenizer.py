"""Text <-> token ids, special tokens and chat templates, on a `tokenizers` fast tokenizer.

Two sources: a Hugging Face directory (tokenizer.json + tokenizer_config.json + ...) and a GGUF
file, whose metadata describes the tokenizer as llama.cpp sees it (vocabulary, merges or scores,
token types). We build the GGUF one directly with `tokenizers`: transformers' GGUF path gives the
same ids but takes ~8 s for a 49k vocabulary.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as FastTokenizer

if TYPE_CHECKING:
    from pagoda.weights.gguf_checkpoint import GGUFCheckpoint

logger = logging.getLogger(__name__)

# llama.cpp token types (`tokenizer.ggml.token_type`).
_CONTROL, _USER_DEFINED = 3, 4

# How llama.cpp splits text before byte-level BPE, keyed by `tokenizer.ggml.pre` (llama-vocab.cpp):
# each regex in turn cuts the pieces further, matches and gaps both kept ("isolated").
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_FAMILY = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    # llama.cpp's "default", also what it falls back to for names it does not know
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais"), (_GPT2,)),
    **dict.fromkeys(_LLAMA3_FAMILY + ("dbrx", "smaug-bpe", "chatglm-bpe", "glm4"), (_LLAMA3,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"), (_QWEN2,)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                    (r"\p{N}", _GPT2)),
    "tekken": (_TEKKEN,),
    **dict.fromkeys(("gpt-4o", "llama4"), (_GPT4O,)),
}
# Where llama.cpp (like those models' tokenizer.json) takes a whole word from the vocabulary before merging.
_IGNORE_MERGES = set(_LLAMA3_FAMILY) | {"tekken"}
# Where llama.cpp adds BOS when the file does not say (`tokenizer.ggml.add_bos_token`).
_ADD_BOS = set(_LLAMA3_FAMILY) | {"tekken", "chameleon"}

_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    """A fast tokenizer plus what serving needs around it: special ids, eos set, chat template."""

    def __init__(self, backend: FastTokenizer, *, special_tokens: dict[str, str] | None = None,
                 extra_eos_token_ids: tuple[int, ...] = (), chat_template: str | None = None,
                 clean_up_tokenization_spaces: bool = False) -> None:
        """`special_tokens` maps names like "bos_token" to token strings (the chat template sees them)."""
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
        named = {self._id_of(name) for name in self.special_tokens}
        added = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.all_special_ids: list[int] = sorted((named | added) - {None})

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

    @classmethod
    def from_gguf(cls, checkpoint: GGUFCheckpoint | str) -> Tokenizer:
        """From a GGUF file's `tokenizer.*` metadata (gpt2 byte-level BPE or llama sentencepiece)."""
        if isinstance(checkpoint, str):
            from pagoda.weights.gguf_checkpoint import GGUFCheckpoint

            checkpoint = GGUFCheckpoint(checkpoint)
        get = checkpoint.get
        kind = get("tokenizer.ggml.model")
        tokens: list[str] = get("tokenizer.ggml.tokens")
        token_types: list[int] = get("tokenizer.ggml.token_type") or [1] * len(tokens)
        pre = get("tokenizer.ggml.pre", "default")
        if kind == "gpt2":
            backend = _byte_level_bpe(tokens, get("tokenizer.ggml.merges") or [], pre)
        elif kind == "llama":
            backend = _sentencepiece_bpe(tokens, get("tokenizer.ggml.scores"), get("tokenizer.ggml.merges"),
                                         get("tokenizer.ggml.unknown_token_id"),
                                         get("tokenizer.ggml.add_space_prefix", True))
        else:
            raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 and llama are)")
        # Control tokens are special (skipped when decoding); user-defined ones are matched whole.
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t, ty in zip(tokens, token_types) if ty == _CONTROL])
        backend.add_tokens([AddedToken(t, special=False, normalized=False)
                            for t, ty in zip(tokens, token_types) if ty == _USER_DEFINED])
        special = {}
        for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding")):
            token_id = get(f"tokenizer.ggml.{key}_token_id")
            if token_id is not None and 0 <= token_id < len(tokens):
                special[name] = tokens[token_id]
        add_bos = get("tokenizer.ggml.add_bos_token", kind == "llama" or pre in _ADD_BOS)
        _set_post_processor(backend, special, add_bos, get("tokenizer.ggml.add_eos_token", False))
        # End of turn / end of message (Llama 3's <|eot_id|>, <|eom_id|>) also end generation.
        ends = tuple(i for i in (get("tokenizer.ggml.eot_token_id"), get("tokenizer.ggml.eom_token_id"))
                     if i is not None)
        return cls(backend, special_tokens=special, extra_eos_token_ids=ends,
                   chat_template=get("tokenizer.chat_template"))

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
        text = _compile_template(template).render(
            messages=[_alias_reasoning(m) for m in messages], tools=tools, documents=documents,
            add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text


# ---- GGUF tokenizer builders ----------------------------------------------------------------

@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the spelling of byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> FastTokenizer:
    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    # Tokens are stored byte-level spelled; a few (added ones) may be raw text: spell those too.
    vocab = {(t if set(t) <= letters else "".join(alphabet[b] for b in t.encode())): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = FastTokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES))
    if pre not in _PRE_SPLITS:
        logger.warning("GGUF pre-tokenizer %r is unknown here; splitting text as llama.cpp's 'default'", pre)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_SPLITS.get(pre, _PRE_SPLITS["default"])]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(tokens: list[str], scores: list[float] | None, merges: list[str] | None,
                       unk_id: int | None, add_space_prefix: bool) -> FastTokenizer:
    """llama.cpp's SPM tokenizer as a `tokenizers` BPE: merges ranked by the merged piece's score.

    Like sentencepiece and llama.cpp (and Llama 2's tokenizer.json), every run of text between
    special tokens gets a "▁" prepended, even one that starts with a space. (A Metaspace
    pre-tokenizer, which transformers' GGUF path uses, skips it there: " hi" would lose a piece.)
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    if merges:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        pairs = _merges_from_scores(vocab, scores or [0.0] * len(tokens))
    unk = tokens[unk_id] if unk_id is not None else None
    backend = FastTokenizer(models.BPE(vocab, pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
    replace = normalizers.Replace(" ", "▁")
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if add_space_prefix else replace
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, best merged score first (as transformers' converter)."""
    merges = []
    for piece, piece_id in vocab.items():
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((scores[piece_id], a, b) for a, b in local)
    merges.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(a, b) for _, a, b in merges]


def _set_post_processor(backend: FastTokenizer, special: dict[str, str], add_bos: bool, add_eos: bool) -> None:
    bos, eos = special.get("bos_token") if add_bos else None, special.get("eos_token") if add_eos else None
    single = " ".join([f"{bos}:0"] * bool(bos) + ["$A:0"] + [f"{eos}:0"] * bool(eos))
    pair = " ".join([single] + [f"{bos}:1"] * bool(bos) + ["$B:1"] + [f"{eos}:1"] * bool(eos))
    used = [t for t in (bos, eos) if t]
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys(used)])


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


# ---- chat templates (the environment transformers renders them in) --------------------------

def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile_template(template: str) -> jinja2.Template:
    # Templates come from model files: untrusted code, hence the sandbox.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env.from_string(template)


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    # As transformers: reasoning under any of its names is visible as `reasoning_content` and `thinking`.
    names = ("reasoning_content", "thinking", "reasoning")
    reasoning = next((message[k] for k in names if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}
