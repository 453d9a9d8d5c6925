"""The offline API: shapes of outputs, sampling options end to end, and bad input."""

import pytest
from reference import assert_all_blocks_returned

from pagoda import LLM, InvalidRequestError, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=128, show_progress=False)


def test_outputs_in_input_order_with_prompt_fields(llm):
    prompts = ["Hello world!", [5, 6, 7, 8], "The quick brown fox"]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (3, 5, 7)]
    outs = llm.generate(prompts, params)
    assert [o.prompt for o in outs] == ["Hello world!", None, "The quick brown fox"]
    assert outs[1].prompt_token_ids == [5, 6, 7, 8]
    assert outs[0].prompt_token_ids == llm.get_tokenizer().encode("Hello world!")
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5, 7]
    for o in outs:
        c = o.outputs[0]
        assert o.finished and c.finish_reason == "length"
        assert c.text == llm.get_tokenizer().decode(c.token_ids)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(llm):
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate("Once upon a time", p)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    batch = llm.generate(["Hello", "Once upon a time", "def add"], [others, p, others])
    assert batch[1].outputs[0].token_ids == alone
    n3 = llm.generate("Once upon a time", SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=12,
                                                         ignore_eos=True))[0]
    assert [c.index for c in n3.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in n3.outputs}) > 1  # n samples differ


def test_stop_strings_and_stop_token_ids(llm):
    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = llm.generate("The quick brown fox", greedy)[0].outputs[0]
    # pick a stop string from the middle of the greedy text
    text = full.text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate("The quick brown fox", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                             stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert stop not in cut.text and text.startswith(cut.text) and cut.text == text[: text.index(stop)]
    tok = full.token_ids[4]
    by_id = llm.generate("The quick brown fox", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                               stop_token_ids=[tok]))[0].outputs[0]
    assert by_id.finish_reason == "stop" and by_id.stop_reason == tok
    assert by_id.token_ids == full.token_ids[: full.token_ids.index(tok) + 1]


def test_eos_ends_generation_unless_ignored(llm):
    eos = llm.get_tokenizer().eos_token_id
    forced = SamplingParams(temperature=0, max_tokens=10, logit_bias={eos: 100})
    out = llm.generate("Hello", forced)[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == [eos] and out.stop_reason is None
    ignored = SamplingParams(temperature=0, max_tokens=10, logit_bias={eos: 100}, ignore_eos=True)
    assert llm.generate("Hello", ignored)[0].outputs[0].token_ids == [eos] * 10


def test_chat_applies_the_template(llm):
    tok = llm.get_tokenizer()
    conv = [{"role": "user", "content": "Hello world!"}]
    out = llm.chat(conv, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    expected = tok.encode(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)
    assert out.prompt_token_ids == expected
    assert tok.decode(expected, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature="hot"), "temperature"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_k=-3), "top_k"),
    (dict(n=0), "n"),
    (dict(stop=[3]), "stop"),
])
def test_invalid_sampling_values_name_the_field(kwargs, field):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(**kwargs)
    assert e.value.param == field and field in str(e.value)


def test_bad_prompts_fail_alone_and_the_engine_goes_on(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    engine.add_request("good", "Hello world!", params)
    for bad, msg in [("", "empty"), ([], "empty"), ([1, 2, 10**6], "out of range"),
                     ([1] * engine.model_config.max_model_len, "context")]:
        with pytest.raises(InvalidRequestError, match=msg) as e:
            engine.add_request(f"bad-{msg}", bad, params)
        assert e.value.param == "prompt"
    with pytest.raises(InvalidRequestError):
        engine.add_request("good", "again", params)  # duplicate id
    done = []
    while engine.has_unfinished_requests():
        done += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in done] == ["good"] and len(done[0].outputs[0].token_ids) == 5
    engine.check_integrity()
    assert_all_blocks_returned(engine)


def test_abort_returns_blocks_at_once(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    engine.add_request("a", "Hello world! How are you today?", params)
    engine.add_request("b", "The quick brown fox", params)
    for _ in range(3):
        engine.step()
    engine.abort_request("a")
    engine.check_integrity()
    assert "a" not in engine.kv_cache.block_tables
    while engine.has_unfinished_requests():
        outs = engine.step()
        assert all(o.request_id == "b" for o in outs)
    assert_all_blocks_returned(engine)


class BrokenMask:
    """A mask whose draw check raises (the sampler verifies draws before masking)."""

    def __call__(self, _ids, logits):
        return logits

    def verify_draw(self, _ids, _token):
        raise RuntimeError("boom")


def _broken(_ids, _logits):
    raise RuntimeError("boom")


@pytest.mark.parametrize("broken", [_broken, BrokenMask()], ids=["processor", "verify_draw"])
def test_a_failing_logits_processor_fails_only_its_request(llm, broken):
    outs = llm.generate(["Hello", "Hello world"], [SamplingParams(max_tokens=3, logits_processors=[broken]),
                                                   SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)])
    assert outs[0].outputs[0].finish_reason == "error" and "boom" in outs[0].extra["error"]
    assert outs[1].outputs[0].finish_reason == "length" and len(outs[1].outputs[0].token_ids) == 3
    # the engine survives: new work runs
    again = llm.generate("Hello world", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert len(again[0].outputs[0].token_ids) == 3
    llm.engine.check_integrity()
    assert_all_blocks_returned(llm.engine)


def test_prompt_logprobs(llm, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    prompt = llm.get_tokenizer().encode("The quick brown fox jumps over the lazy dog.")
    out = llm.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=2, temperature=0))[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        lp = torch.log_softmax(ref(torch.tensor([prompt])).logits[0].float(), -1)
    for j in range(1, len(prompt)):
        entry = out.prompt_logprobs[j]
        assert abs(entry[prompt[j]].logprob - float(lp[j - 1, prompt[j]])) < 1e-4
        assert len(entry) >= 2


class ForcePhrase:
    """A constraint: after the first free token, the output must spell ``phrase`` token by token."""

    def __init__(self, phrase: list[int], jump: bool) -> None:
        self.phrase = phrase
        if jump:
            self.forced_tokens = self._forced

    def __call__(self, token_ids, logits):
        k = len(token_ids) - 1
        if 0 <= k < len(self.phrase):
            masked = logits.clone().fill_(float("-inf"))
            masked[self.phrase[k]] = logits[self.phrase[k]]
            return masked
        return logits

    def _forced(self, token_ids):
        k = len(token_ids) - 1
        return self.phrase[k:] if 0 <= k < len(self.phrase) else []

    def clone(self):
        return ForcePhrase(self.phrase, hasattr(self, "forced_tokens"))


def test_jump_forward_equals_step_by_step(llm):
    phrase = [40, 41, 42, 43, 44, 45]
    outs = {}
    for jump in (False, True):
        before = llm.engine.get_stats().jump_forward_tokens_total
        steps_before = llm.engine.get_stats().num_steps
        params = SamplingParams(n=2, temperature=0.8, seed=3, max_tokens=14, ignore_eos=True,
                                logits_processors=[ForcePhrase(phrase, jump)])
        outs[jump] = [c.token_ids for c in llm.generate("Hello world", params)[0].outputs]
        saved = llm.engine.get_stats().jump_forward_tokens_total - before
        steps = llm.engine.get_stats().num_steps - steps_before
        assert saved == (2 * len(phrase) if jump else 0)
    assert outs[True] == outs[False]
    assert all(o[1:7] == phrase for o in outs[True])
    assert steps < 14  # fewer model steps than tokens


def test_data_parallel_is_refused_offline_with_a_clear_error(tiny_llama_dir):
    with pytest.raises(ValueError, match="pagoda serve --dp"):
        LLM(tiny_llama_dir, data_parallel_size=2, show_progress=False)


def test_static_batching_returns_a_batch_together(llm, tiny_llama_dir):
    """Static batching: no request joins a running batch, a batch's finished requests are computed
    as padding rows, and its short answers come back with its longest one (continuous batching
    returns each when it is done). Padding never changes the real rows' tokens."""
    llm = LLM(tiny_llama_dir, dtype="float32", batching="static", max_num_seqs=2, num_kv_blocks=64)
    engine = llm.engine
    for i, n in enumerate([2, 9, 3]):
        engine.add_request(f"r{i}", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    finished_at: dict[str, int] = {}
    step = 0
    while engine.has_unfinished_requests():
        step += 1
        finished_at |= {o.request_id: step for o in engine.step() if o.finished}
    assert finished_at["r0"] == finished_at["r1"] < finished_at["r2"]  # r0 waited for r1; r2 is the next batch
    assert_all_blocks_returned(engine)

    prompts = [[5, 6], [7, 8, 9], [10, 11, 12, 13], [14]]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 12, 7, 5)]
    static = LLM(tiny_llama_dir, dtype="float32", batching="static", max_num_seqs=3, num_kv_blocks=64)
    got = [o.outputs[0].token_ids for o in static.generate(prompts, params, use_tqdm=False)]
    assert got == [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
