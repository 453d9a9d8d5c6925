"""The OpenAI API through the real `openai` client (sync and async, streamed and not)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from live_server import MODEL, tiny_engine_args

PROMPT = "The quick brown fox jumps over"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello world!"}]


def _stream_completion(client, **kw):
    text, finish, usage, chunks = {}, {}, None, 0
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return text, finish, usage, chunks


def test_models(server):
    models = server.openai().models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].max_model_len == 512


def test_completion_usage_and_length(server):
    r = server.openai().completions.create(model=MODEL, prompt=PROMPT, max_tokens=7, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.model == MODEL
    (choice,) = r.choices
    assert choice.finish_reason == "length"
    tokens = server.post("/tokenize", json={"prompt": PROMPT}).json()
    assert r.usage.prompt_tokens == tokens["count"]
    assert r.usage.completion_tokens == 7 and r.usage.total_tokens == tokens["count"] + 7


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_p=0.9, top_k=50, seed=7)])
def test_completion_stream_equals_non_stream(server, sampling):
    client = server.openai()
    extra = {k: sampling.pop(k) for k in ("top_k",) if k in sampling}
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=16, n=2 if "seed" in sampling else 1, extra_body=extra,
              **sampling)
    full = client.completions.create(**kw)
    text, finish, usage, chunks = _stream_completion(client, **kw)
    assert chunks > 3  # it really streamed
    for choice in full.choices:
        assert text[choice.index] == choice.text
        assert finish[choice.index] == choice.finish_reason
    assert usage.model_dump() == full.usage.model_dump()
    if "seed" in sampling:  # two samples of one seeded request differ, yet each is reproducible
        assert full.choices[0].text != full.choices[1].text


def test_chat_stream_equals_non_stream(server):
    client = server.openai()
    kw = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=20, temperature=0.8, seed=3)
    full = client.chat.completions.create(**kw)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    stream = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert stream[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert content == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == full.choices[0].finish_reason
    assert stream[-1].usage.model_dump() == full.usage.model_dump()
    # usage counts the templated prompt
    templated = server.post("/tokenize", json={"messages": MESSAGES}).json()
    assert full.usage.prompt_tokens == templated["count"]


def test_async_client_concurrent_streams(server):
    async def main():
        client = server.async_openai()
        prompts = [f"{PROMPT} {i}" for i in range(8)]

        async def streamed(p):
            out = []
            async for chunk in await client.completions.create(model=MODEL, prompt=p, max_tokens=12,
                                                               temperature=0, stream=True):
                out.append(chunk.choices[0].text)
            return "".join(out)

        async def whole(p):
            r = await client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0)
            return r.choices[0].text

        streams = await asyncio.gather(*(streamed(p) for p in prompts))
        wholes = await asyncio.gather(*(whole(p) for p in prompts))
        await client.close()
        return streams, wholes

    streams, wholes = asyncio.run(main())
    assert streams == wholes


def test_batch_prompts_and_token_prompts(server):
    client = server.openai()
    ids = server.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    r = client.completions.create(model=MODEL, prompt=[PROMPT, "Hello"], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both samples agree
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == r.choices[0].text
    assert r.usage.prompt_tokens == len(ids) + server.post("/tokenize", json={"prompt": "Hello"}).json()["count"]


def test_matches_offline_engine(server, tiny_llama_dir):
    from pagoda.engine.engine_factory import build_engine
    from pagoda.sampling_params import SamplingParams

    prompt = "A prompt no other test sends, so neither side has it in a prefix cache"
    engine = build_engine(tiny_engine_args(tiny_llama_dir, num_kv_blocks=16))
    engine.add_request("x", prompt, SamplingParams(max_tokens=10, temperature=0))
    while engine.has_unfinished_requests():
        outs = engine.step()
    r = server.openai().completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0)
    assert r.choices[0].text == outs[0].outputs[0].text


def test_echo_with_prompt_logprobs(server):
    client = server.openai()
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2)
    choice = r.choices[0]
    n_prompt = r.usage.prompt_tokens
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    assert len(lp.tokens) == n_prompt + 4 == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # greedy: every generated token is the most likely one
    for tok, top in zip(lp.tokens[n_prompt:], lp.top_logprobs[n_prompt:]):
        assert max(top, key=top.get) == tok
    # the streamed version carries the same logprobs
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
                                            logprobs=2, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    streamed = [x for c in chunks for x in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs)


def test_chat_logprobs(server):
    r = server.openai().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                                logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token  # greedy
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob >= item.top_logprobs[2].logprob


def test_stop_string_and_penalties(server):
    client = server.openai()
    base = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
    stop = base[5:8]
    assert len(stop) == 3
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == base[: base.index(stop)]
    assert r.choices[0].model_extra["stop_reason"] == stop
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop], stream=True,
        extra_body={"ignore_eos": True}))
    assert streamed == r.choices[0].text
    # every OpenAI field and extension is accepted and has an effect or is validated
    r = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, logit_bias={"5": 2.0}, seed=1, user="tester",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2, "priority": 1, "min_tokens": 2})
    assert r.usage.completion_tokens >= 2


def test_logit_bias_forces_a_token(server):
    r = server.openai().completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                           logit_bias={"65": 100}, extra_body={"ignore_eos": True})
    text = server.post("/detokenize", json={"tokens": [65, 65, 65]}).json()["prompt"]
    assert r.choices[0].text == text


def test_tokenize_detokenize(server):
    t = server.post("/tokenize", json={"model": MODEL, "prompt": PROMPT}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 512
    assert server.post("/detokenize", json={"tokens": t["tokens"]}).json() == {"prompt": PROMPT}
    chat = server.post("/tokenize", json={"messages": MESSAGES}).json()
    text = server.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>") and text.endswith("assistant\n")


def test_health(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_sse_bytes_on_the_wire(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body,
                      headers={"Authorization": "Bearer test-key"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"  # every event ends with a blank line
    import json

    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 2) + ["length"]
    assert "usage" not in chunks[0] and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_async_chat(server):
    async def main():
        client = server.async_openai()
        kw = dict(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
        full = await client.chat.completions.create(**kw)
        parts = [c.choices[0].delta.content or "" async for c in await client.chat.completions.create(
            stream=True, **kw)]
        await client.close()
        return full.choices[0].message.content, "".join(parts)

    full, streamed = asyncio.run(main())
    assert full == streamed
