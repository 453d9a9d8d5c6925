"""IncrementalDetokenizer: streamed text equals a full decode, stop strings cut where a full decode would."""

from __future__ import annotations

import io
import random

import pytest
import tiny_gguf
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from pagoda.detokenizer import IncrementalDetokenizer
from pagoda.tokenizer import Tokenizer
from pagoda.weights.default_model import default_model_path
from pagoda.weights.gguf_checkpoint import GGUFCheckpoint
from pagoda.weights.gguf_tokenizer import tokenizer_from_gguf

CORPUS = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1\n",
          "héllo wörld ça va", "paged attention and continuous batching"] * 5
TEXTS = [
    "Hello world! The fox said: STOP right there.",
    "emoji 😀👍🏽🇫🇷 in the middle, 中文 and 日本語 too — never seen in training",
    "code:\n\tdef g(y):\n\t\treturn y ** 2  # ok\n\n",
    "  spaces   everywhere  ",
    "<|im_start|>assistant\nSure<|im_end|>\n",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    """A small byte-level BPE: unseen characters come out as several byte tokens."""
    backend = FastTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(backend, special_tokens={"bos_token": SPECIALS[1], "eos_token": SPECIALS[2]})


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory) -> Tokenizer:
    """A sentencepiece vocabulary with byte fallback, whose decoder strips the first space."""
    spm = pytest.importorskip("sentencepiece")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=proto, vocab_size=300,
                                   model_type="bpe", byte_fallback=True, minloglevel=3,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    n = sp.get_piece_size()
    path = str(tmp_path_factory.mktemp("spm") / "spm.gguf")
    tiny_gguf.write_tokenizer(
        path, model="llama", tokens=[sp.id_to_piece(i) for i in range(n)], scores=[sp.get_score(i) for i in range(n)],
        token_types=[3 if sp.is_control(i) else 6 if sp.is_byte(i) else 2 if sp.is_unknown(i) else 1 for i in range(n)],
        bos=1, eos=2, unk=0, add_bos=False, add_space_prefix=True)
    return tokenizer_from_gguf(path)


def stream(tok: Tokenizer, ids: list[int], chunks: list[int], **kwargs) -> tuple[IncrementalDetokenizer, list[str]]:
    """Feed `ids` in chunks of the given sizes, collecting the deltas (the last one with finished=True)."""
    detok = IncrementalDetokenizer(tok, prompt_token_ids=[5, 6], **kwargs)
    deltas, start = [], 0
    for size in chunks:
        if start >= len(ids):
            break
        stop = detok.update(ids[start:start + size])
        start += size
        if stop is not None:
            break
        deltas.append(detok.get_delta(finished=False))
    deltas.append(detok.get_delta(finished=True))
    return detok, deltas


@pytest.mark.parametrize("skip", [True, False])
def test_streamed_text_equals_full_decode(byte_level, sentencepiece, skip):
    rng = random.Random(0)
    for tok in (byte_level, sentencepiece):
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=False)
            for chunking in ([1] * len(ids), [rng.randint(1, 4) for _ in ids]):
                detok, deltas = stream(tok, ids, chunking, skip_special_tokens=skip)
                expected = tok.decode(ids, skip_special_tokens=skip)
                assert detok.output_text == expected and "".join(deltas) == expected, text
                assert all("\ufffd" not in d for d in deltas), deltas  # never half a character


def test_random_token_soup_still_equals_full_decode(byte_level):
    """Arbitrary ids (broken UTF-8, specials): the text at the end is still exactly decode()."""
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.randrange(byte_level.vocab_size) for _ in range(rng.randint(1, 40))]
        detok, deltas = stream(byte_level, ids, [rng.randint(1, 3) for _ in ids])
        assert detok.output_text == byte_level.decode(ids) == "".join(deltas)


def test_partial_character_is_held_back(byte_level):
    ids = byte_level.encode("a😀", add_special_tokens=False)
    assert len(ids) >= 3  # "a" and the emoji's bytes in pieces: the tokenizer never saw it
    detok = IncrementalDetokenizer(byte_level, [], skip_special_tokens=True, stop=[], include_stop_str_in_output=False)
    seen = []
    for token_id in ids:
        detok.update([token_id])
        seen.append(detok.get_delta(finished=False))
    assert seen[0] == "a" and all(d == "" for d in seen[1:-1]) and seen[-1] == "😀"
    detok = IncrementalDetokenizer(byte_level, [])
    detok.update(ids[:-1])  # stops mid-character: the text keeps the replacement character, as decode() does
    assert detok.get_delta(finished=False) == "a"
    assert detok.output_text == byte_level.decode(ids[:-1]) and detok.get_delta(finished=True).endswith("\ufffd")


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_cut_like_a_full_decode(byte_level, include):
    text = "Hello world! The fox said: STOP right there. STOP again."
    ids = byte_level.encode(text, add_special_tokens=False)
    for stop in (["STOP"], ["right", "STOP"], ["fox said", "x"], ["x", "ox"], ["said: STOP", "STOP"], [" wor"], ["never"], ["e."]):
        for size in (1, 2, 5):
            detok, deltas = stream(byte_level, ids, [size] * len(ids), stop=stop, include_stop_str_in_output=include)
            # The stop string that a reader of the text would see completed first.
            hits = [(text.find(s) + len(s), text.find(s), s) for s in stop if s in text]
            if not hits:
                assert detok.stop_reason is None and detok.output_text == text
                continue
            _, index, first = min(hits)
            expected = text[:index + len(first)] if include else text[:index]
            assert detok.stop_reason == first and detok.output_text == expected, (stop, size)
            assert "".join(deltas) == expected
            if not include:  # nothing of the stop string was streamed before it matched
                assert all(first not in d for d in deltas)


def test_stop_buffer_holds_back_the_tail(byte_level):
    detok = IncrementalDetokenizer(byte_level, [], stop=["abc", "xy"])
    assert detok.stop_buffer_length == 2
    detok.update(byte_level.encode("hello wor", add_special_tokens=False))
    assert detok.get_delta(finished=False) == "hello w"
    detok.update(byte_level.encode("ld", add_special_tokens=False))
    assert detok.get_delta(finished=False) == "or"
    assert detok.get_delta(finished=True) == "ld"
    included = IncrementalDetokenizer(byte_level, [], stop=["abc"], include_stop_str_in_output=True)
    assert included.stop_buffer_length == 0


def test_decoding_is_incremental(byte_level):
    """Each step decodes a window of a few tokens, not the whole output."""
    windows = []
    real_decode = byte_level.decode

    class Spy:
        def __getattr__(self, name):
            return getattr(byte_level, name)

        def decode(self, ids, skip_special_tokens=True):
            windows.append(len(ids))
            return real_decode(ids, skip_special_tokens=skip_special_tokens)

    ids = byte_level.encode(" ".join(TEXTS[:4]) * 20, add_special_tokens=False)
    detok = IncrementalDetokenizer(Spy(), [])
    for token_id in ids:
        detok.update([token_id])
    assert detok.output_text == real_decode(ids)
    assert len(ids) > 500 and max(windows) <= 8 and len(windows) <= 2 * len(ids)


@pytest.mark.slow
def test_default_model_tokenizer_streams_exactly():
    tok = tokenizer_from_gguf(GGUFCheckpoint(default_model_path()))
    text = "\n".join(TEXTS) + open(__file__, encoding="utf-8").read()
    ids = tok.encode(text)
    detok, deltas = stream(tok, ids, [1] * len(ids), stop=["#" * 40])  # never in the text
    assert detok.output_text == tok.decode(ids) == "".join(deltas)
    ids = tok.encode("Sure! Here you go.<|im_end|>\n<|im_start|>user")
    detok, deltas = stream(tok, ids, [1] * len(ids), stop=["<|im_start|>"], skip_special_tokens=False)
    assert detok.output_text == "Sure! Here you go.<|im_end|>\n" and detok.stop_reason == "<|im_start|>"
