"""Tokenizer against the tokenizers it stands for: sentencepiece, trained `tokenizers` BPEs, transformers."""

from __future__ import annotations

import io
import json
import os
import pickle
import time

import jinja2
import pytest
import tiny_gguf
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as FastTokenizer

from pagoda.tokenizer import Tokenizer
from pagoda.weights.default_model import default_model_path
from pagoda.weights.gguf_checkpoint import GGUFCheckpoint
from pagoda.weights.gguf_tokenizer import tokenizer_from_gguf

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Tokenizers split text into pieces.",
    "def tokenize(text: str) -> list[int]:\n    return [ord(c) for c in text]  # naive\n",
    "Continuous batching keeps the accelerator busy; paged attention keeps memory tidy!",
    "héllo wörld, ça va? naïve café — «quotes» and “smart quotes” ... 1234567890",
    "中文分词 日本語のテキスト 한국어 텍스트 Ελληνικά русский текст",
    "emoji 😀😃👍🏽 🇫🇷 ❤️ and math ∑∫√π ≤ ≥",
    "   indented\tand\ttabbed\r\nwindows lines\n\n\nmany newlines",
] * 3

TEXTS = [
    "Hello world!",
    "",
    " ",
    "  leading spaces and trailing   ",
    "The quick brown fox; tokenizers' pieces don't 'merge' we've I'll",
    "numbers 3.14159 and 2,718,281 and 0x1F",
    "def f(x):\n\treturn x ** 2  # square\n\n\nprint(f(12))",
    "héllo wörld ñ ç — ça va? Ελληνικά русский",
    "中文 日本語 한국어 tiếng Việt",
    "emoji 😀👍🏽🇫🇷❤️ 🧑‍🤝‍🧑 zalgo ẑ̷̡a̵l",
    "\r\n\r\n  \t mixed\u00a0whitespace\u2003here",
    "unseen characters ᚠᛇᚻ ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3? 😀"}],
    [{"role": "user", "content": "  spaces  \n and lines\n"}, {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


# ---- byte-level BPE (tokenizer.ggml.model = gpt2) --------------------------------------------

# Pre-tokenizers as those models' own tokenizer.json files spell them (the regexes copied from there).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _hf_pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return {
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_REGEX), "isolated"), byte_level]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN2_REGEX), "isolated"), byte_level]),
    }[pre]


def _train_bpe(pre: str) -> FastTokenizer:
    """A byte-level BPE trained here with ChatML special tokens, pre-tokenized like model `pre`'s."""
    backend = FastTokenizer(models.BPE())
    backend.pre_tokenizer = _hf_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    if pre == "llama-bpe":  # Llama 3's tokenizer.json looks whole words up before merging
        config = json.loads(backend.to_str())
        config["model"]["ignore_merges"] = True
        backend = FastTokenizer.from_str(json.dumps(config))
    return backend


def _write_bpe_gguf(backend: FastTokenizer, pre: str, path: str, eot: int | None = None) -> str:
    model = json.loads(backend.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    tiny_gguf.write_tokenizer(
        path, model="gpt2", pre=pre, tokens=tokens, token_types=[3 if t in SPECIALS else 1 for t in tokens],
        merges=[" ".join(m) if isinstance(m, list) else m for m in model["merges"]],
        bos=1, eos=2, pad=0, chat_template=_chatml_template(), eot=eot)
    return path


@pytest.fixture(scope="module")
def trained_bpe():
    return _train_bpe("gpt-2")


@pytest.fixture(scope="module")
def bpe_gguf(trained_bpe, tmp_path_factory):
    return _write_bpe_gguf(trained_bpe, "gpt-2", str(tmp_path_factory.mktemp("tok") / "bpe.gguf"))


def _chatml_template() -> str:
    return ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_gguf_byte_level_bpe_matches_the_trained_tokenizer(pre, tmp_path):
    trained = _train_bpe(pre)
    eot = 0 if pre == "llama-bpe" else None  # an end-of-turn token ends generation like eos
    tok = tokenizer_from_gguf(_write_bpe_gguf(trained, pre, str(tmp_path / "bpe.gguf"), eot=eot))
    for text in TEXTS + [f"{SPECIALS[1]}user\n{TEXTS[4]}{SPECIALS[2]}\n", "x1y22 333 4444 " * 3]:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == trained.encode(text).ids, (pre, text)
        assert tok.decode(ids, skip_special_tokens=False) == trained.decode(ids, skip_special_tokens=False)
        assert tok.decode(ids) == trained.decode(ids)
    # llama.cpp adds BOS by default for Llama 3 vocabularies only (the file has no add_bos_token here).
    assert (tok.encode("hi")[0] == 1) == (pre == "llama-bpe")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.eos_token_ids == ({2, 0} if eot == 0 else {2}) and tok.all_special_ids == [0, 1, 2]
    assert tok.vocab_size == trained.get_vocab_size()


def test_gguf_byte_level_bpe_matches_transformers(bpe_gguf, transformers):
    tok = tokenizer_from_gguf(GGUFCheckpoint(bpe_gguf))
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(bpe_gguf),
                                                     gguf_file=os.path.basename(bpe_gguf))
    _assert_same_tokenizer(tok, ref, TEXTS + ["<|im_start|>hi<|im_end|><|endoftext|>"])
    for conversation in CONVERSATIONS:
        _assert_same_chat(tok, ref, conversation)


# ---- sentencepiece (tokenizer.ggml.model = llama) --------------------------------------------

@pytest.fixture(scope="module")
def sentencepiece_model():
    spm = pytest.importorskip("sentencepiece")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=proto, vocab_size=420,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=3,
                                   # as Llama's: no normalization, whitespace kept (llama.cpp assumes both)
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


@pytest.fixture(scope="module")
def spm_gguf(sentencepiece_model, tmp_path_factory):
    """Written the way llama.cpp's converter writes a sentencepiece vocabulary (`_create_vocab_sentencepiece`)."""
    sp = sentencepiece_model
    n = sp.get_piece_size()

    def token_type(i: int) -> int:
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1

    path = str(tmp_path_factory.mktemp("tok") / "spm.gguf")
    tiny_gguf.write_tokenizer(path, model="llama", tokens=[sp.id_to_piece(i) for i in range(n)],
                              token_types=[token_type(i) for i in range(n)],
                              scores=[sp.get_score(i) for i in range(n)], bos=1, eos=2, unk=0, add_bos=True,
                              add_space_prefix=True)
    return path


def test_gguf_sentencepiece_matches_sentencepiece(sentencepiece_model, spm_gguf):
    sp = sentencepiece_model
    tok = tokenizer_from_gguf(spm_gguf)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == [1] + sp.encode(text), text
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids), text
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    # llama.cpp starts every run of text after a special token with a space, as if it began the input.
    assert tok.encode("<s>one</s> two", add_special_tokens=False) == [1, *sp.encode("one"), 2, *sp.encode(" two")]


def test_gguf_sentencepiece_matches_transformers(spm_gguf, transformers):
    tok = tokenizer_from_gguf(spm_gguf)
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(spm_gguf), gguf_file=os.path.basename(spm_gguf))
    # transformers' GGUF path pre-tokenizes with Metaspace, which adds no "▁" to text that starts with a
    # space or follows a special token; sentencepiece and llama.cpp do (checked above). Elsewhere they agree.
    _assert_same_tokenizer(tok, ref, [t for t in TEXTS if not t[:1].isspace()])


# ---- Hugging Face directories ----------------------------------------------------------------

RICH_TEMPLATE = """{%- if tools %}<|im_start|>system
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% endif -%}
{%- set ns = namespace(turns=0) -%}
{%- for m in messages -%}
{%- if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m.role) }}{% endif -%}
{%- if m.role == 'assistant' and m.content == '' %}{% continue %}{% endif -%}
{%- set ns.turns = ns.turns + 1 -%}
{{ bos_token if loop.first else '' }}<|im_start|>{{ m.role }}
{{ m.content | trim }}{% if m.reasoning_content %} [{{ m.reasoning_content }}]{% endif %}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant ({{ ns.turns }} turns)
{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif -%}"""


@pytest.fixture(scope="module")
def hf_dir(trained_bpe, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tok")
    backend = FastTokenizer.from_str(trained_bpe.to_str())
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", pair="<|im_start|> $A $B",
                                                           special_tokens=[("<|im_start|>", 1)])
    backend.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True},
        "unk_token": None, "pad_token": "<|endoftext|>", "add_bos_token": True, "chat_template": RICH_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}))
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0], "bos_token_id": 1}))
    return str(root)


def test_from_pretrained_matches_transformers(hf_dir, transformers):
    tok = Tokenizer.from_pretrained(hf_dir)
    ref = transformers.AutoTokenizer.from_pretrained(hf_dir)
    _assert_same_tokenizer(tok, ref, TEXTS)
    assert tok.encode("hi")[0] == 1  # from tokenizer.json's post-processor
    assert tok.eos_token_ids == frozenset({2, 0}) and tok.pad_token_id == 0
    tools = [{"type": "function", "function": {"name": "f<&>", "parameters": {"x": "é"}}}]
    for conversation in CONVERSATIONS + [[{"role": "assistant", "content": "x", "reasoning": "why"}]]:
        _assert_same_chat(tok, ref, conversation)
        _assert_same_chat(tok, ref, conversation, tools=tools, enable_thinking=False)
    with pytest.raises(jinja2.TemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_file_and_sandbox(hf_dir, tmp_path):
    for name in ("tokenizer.json", "generation_config.json"):
        (tmp_path / name).write_bytes(open(os.path.join(hf_dir, name), "rb").read())
    (tmp_path / "chat_template.jinja").write_text("{{ strftime_now('%Y') }}|{{ messages[0].content }}")
    tok = Tokenizer.from_pretrained(str(tmp_path))
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == f"{time.strftime('%Y')}|x"
    # No tokenizer_config.json: no named special tokens, but generation_config's eos list still stops.
    assert tok.bos_token_id is None and tok.eos_token_id is None and tok.eos_token_ids == frozenset({2, 0})
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "x"}],
                                chat_template="{{ messages.__class__.__subclasses__() }}")


def test_from_pretrained_needs_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(str(tmp_path))


# ---- the bundled model -----------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_tokenizer_matches_transformers(transformers):
    path = default_model_path()
    start = time.perf_counter()
    tok = tokenizer_from_gguf(GGUFCheckpoint(path))
    elapsed = time.perf_counter() - start
    assert elapsed < 3, f"tokenizer took {elapsed:.1f} s"
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    texts = TEXTS + ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<repo_name>x<file_sep>y.py\n",
                     "a 12345 b x1y22 " * 3, open(__file__, encoding="utf-8").read()]
    _assert_same_tokenizer(tok, ref, texts)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.eos_token_ids == frozenset({2}) and tok.vocab_size == 49152
    assert tok.encode("Hello")[0] != tok.bos_token_id  # SmolLM2 adds no BOS
    assert set(tok.all_special_ids) == set(range(17))
    for conversation in CONVERSATIONS:
        _assert_same_chat(tok, ref, conversation)


def _assert_same_tokenizer(tok: Tokenizer, ref, texts: list[str]) -> None:
    for text in texts:
        for special in (True, False):
            ids = tok.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), (text, special)
        assert tok.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert tok.vocab_size == len(ref)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ref.bos_token_id, ref.eos_token_id,
                                                                      ref.pad_token_id)
    assert set(ref.all_special_ids) <= set(tok.all_special_ids)
    assert tok.chat_template == ref.chat_template


def _assert_same_chat(tok: Tokenizer, ref, conversation: list[dict], **kwargs) -> None:
    for add in (True, False):
        text = tok.apply_chat_template(conversation, add_generation_prompt=add, **kwargs)
        assert text == ref.apply_chat_template(conversation, add_generation_prompt=add, tokenize=False, **kwargs)
        ids = tok.apply_chat_template(conversation, add_generation_prompt=add, tokenize=True, **kwargs)
        expected = ref.apply_chat_template(conversation, add_generation_prompt=add, tokenize=True, **kwargs)
        expected = expected["input_ids"] if not isinstance(expected, list) else expected
        assert ids == expected


def test_tokenizer_pickles(bpe_gguf):
    """The server ships the engine's tokenizer to the API process."""
    tok = tokenizer_from_gguf(bpe_gguf)
    copy = pickle.loads(pickle.dumps(tok))
    text = f"{SPECIALS[1]}user\n{TEXTS[9]}{SPECIALS[2]}"
    assert copy.encode(text) == tok.encode(text) and copy.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert copy.eos_token_ids == tok.eos_token_ids and copy.all_special_ids == tok.all_special_ids
    assert copy.apply_chat_template(CONVERSATIONS[1]) == tok.apply_chat_template(CONVERSATIONS[1])


def test_save_pretrained_round_trips_a_gguf_tokenizer(tmp_path):
    """The bundled GGUF's tokenizer written as an HF directory reads back the same."""
    original = tokenizer_from_gguf(default_model_path())
    original.save_pretrained(str(tmp_path))
    loaded = Tokenizer.from_pretrained(str(tmp_path))
    text = "Hello <|im_start|>world, 1234 héllo\n\tcode()"
    assert loaded.encode(text) == original.encode(text)
    assert loaded.eos_token_id == original.eos_token_id and loaded.bos_token_id == original.bos_token_id
    messages = [{"role": "user", "content": "Hi"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(messages, tokenize=False)
