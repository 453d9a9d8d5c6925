"""pagoda.lang on the in-process engine (tiny random model)."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest
import torch

from pagoda import lang
from pagoda.lang.engine_backend import EngineBackend

LONG = "The quick brown fox jumps over the lazy dog. Paged attention stores keys in blocks. " * 4


@pytest.fixture(scope="module")
def backend(tiny_llm):
    return EngineBackend(tiny_llm)


@lang.function
def chat_program(s, question):
    s += lang.system("You are brief.")
    s += lang.user(question)
    s += lang.assistant(lang.gen("answer", max_tokens=6) + " - " + lang.select("verdict", ["yes", "no", "maybe so"]))
    s += lang.user("A number and a record, please.")
    s += lang.assistant(lang.gen("number", regex=r"[1-9]\d{0,3}") + "\n"
                        + lang.gen("record", json_schema={"type": "object", "properties": {
                            "ok": {"type": "boolean"}, "k": {"enum": ["a", "b"]}},
                            "required": ["ok", "k"], "additionalProperties": False}, max_tokens=60))


def test_roles_gen_select_and_constraints(backend):
    s = chat_program.run(question="Hello world", backend=backend)
    messages = s.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == s["answer"] + " - " + s["verdict"]
    assert s["verdict"] in ("yes", "no", "maybe so") and len(s.scores("verdict")) == 3
    assert re.fullmatch(r"[1-9]\d{0,3}", s["number"], re.ASCII)
    jsonschema.validate(json.loads(s["record"]), {"required": ["ok", "k"]})
    assert s.text() == s["number"] + "\n" + s["record"]


def test_select_is_the_best_length_normalised_loglikelihood(backend, tiny_llm, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    options = ["fox", "lazy dog sleeping", "blocks of keys", "a"]

    @lang.function
    def pick(s):
        s += LONG + "So the answer is"
        s += lang.select("pick", options)

    s = pick.run(backend=backend)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = tiny_llm.engine.tokenizer
    head = tok.encode(LONG + "So the answer is")
    expected = []
    for option in options:
        full = tok.encode(LONG + "So the answer is" + option)
        k = next((i for i, (a, b) in enumerate(zip(head, full, strict=False)) if a != b), len(head))
        with torch.no_grad():
            logprobs = torch.log_softmax(ref(torch.tensor([full])).logits[0].float(), -1)
        option_lps = [float(logprobs[i - 1, full[i]]) for i in range(k, len(full))]
        expected.append(sum(option_lps) / len(option_lps))
    assert s.scores("pick") == pytest.approx(expected, abs=1e-3)
    assert s["pick"] == options[max(range(len(options)), key=expected.__getitem__)]
    assert not math.isinf(min(expected))


def test_fork_branches_share_the_prefix_blocks(backend, tiny_llm):
    engine = tiny_llm.engine
    block = engine.cache_config.block_size

    @lang.function
    def branches(s):
        s += LONG + lang.gen("intro", max_tokens=3)
        forks = s.fork(3)
        for i, f in enumerate(forks):
            f += f" Branch {i}:" + lang.gen("x", max_tokens=8, temperature=1.0, seed=i)
        forks.join()
        s += "".join(f["x"] for f in forks)  # read back into the parent
        s.forks = forks

    before = engine.get_stats()
    s = branches.run(backend=backend)
    after = engine.get_stats()
    prefix_len = len(engine.tokenizer.encode(LONG + s["intro"]))
    shared_blocks = prefix_len // block
    assert shared_blocks >= 4
    hits = after.prefix_cache_hits_total - before.prefix_cache_hits_total
    computed = after.prompt_tokens_total - before.prompt_tokens_total
    # each branch found the prefix's full blocks in the cache, and computed only its own tail
    assert hits >= 3 * shared_blocks * block, (hits, shared_blocks)
    assert computed <= prefix_len + 3 * (block + 8), (computed, prefix_len)
    assert len(s.forks) == 3 and all(isinstance(f["x"], str) for f in s.forks)


def test_run_batch_keeps_order_and_batches(backend, tiny_llm):
    @lang.function
    def number(s, i):
        s += f"Item {i}: "
        s += lang.gen("n", regex=r"\d{3}", temperature=1.0, seed=i)

    steps_before = tiny_llm.engine.get_stats().num_steps
    states = number.run_batch([{"i": i} for i in range(12)], backend=backend, progress_bar=False)
    steps = tiny_llm.engine.get_stats().num_steps - steps_before
    assert all(re.fullmatch(r"\d{3}", st["n"], re.ASCII) for st in states)
    assert [st.text().split(":")[0] for st in states] == [f"Item {i}" for i in range(12)]
    assert steps < 12 * 3  # programs ran together, not one after another


def test_errors_surface_when_the_state_is_read(backend):
    @lang.function
    def bad(s):
        s += lang.user("hi" + lang.gen("x"))

    with pytest.raises(ValueError, match="only assistant turns"):
        bad.run(backend=backend)

    @lang.function
    def bad_regex(s):
        s += "x" + lang.gen("y", regex="(")

    with pytest.raises(Exception, match="regular expression"):
        bad_regex.run(backend=backend)
