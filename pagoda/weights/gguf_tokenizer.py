"""A GGUF file's tokenizer, built directly with `tokenizers` from its metadata.

The metadata describes the tokenizer as llama.cpp sees it (vocabulary, merges or scores, token
types, pre-tokenizer name); transformers' GGUF path gives the same ids but takes ~8 s for a 49k
vocabulary.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as FastTokenizer

from pagoda.tokenizer import Tokenizer
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


def tokenizer_from_gguf(checkpoint: GGUFCheckpoint | str) -> Tokenizer:
    """From a GGUF file's `tokenizer.*` metadata (gpt2 byte-level BPE or llama sentencepiece)."""
    if isinstance(checkpoint, str):
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
    return Tokenizer(backend, special_tokens=special, extra_eos_token_ids=ends,
               chat_template=get("tokenizer.chat_template"))


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
    backend = FastTokenizer(models.BPE(vocab, _merge_pairs(merges), ignore_merges=pre in _IGNORE_MERGES))
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
        pairs = _merge_pairs(merges)
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


def _merge_pairs(merges: list[str]) -> list[tuple[str, str]]:
    """GGUF's "a b" merge strings as (a, b) pairs."""
    pairs = []
    for m in merges:
        a, b = m.split(" ", 1)
        pairs.append((a, b))
    return pairs


def _merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, best merged score first (as transformers' converter)."""
    merges: list[tuple[float, str, str]] = []
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
