"""Tool calling, reasoning and unsupported fields on /v1/chat/completions, through the real `openai`
client against a live server on the tiny random model.

A random 2-layer model will not choose a tool by itself, so the parser and template paths are driven
by forced outputs (a `guided_grammar` that spells the output) and by the tool grammars, which leave
the model no way to write anything but a valid call.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from live_server import MODEL
from tool_templates import TOOLS_TEMPLATE

from pagoda.tokenizer import Tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
                                                                         "maximum": 999},
                                                                   "b": {"type": "integer", "minimum": 0,
                                                                         "maximum": 999}},
                                  "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
# arguments schemas the grammar must enforce (bounded, so a random model ends within max_tokens)
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}, "required": ["name"],
     "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 5},
                                      "ok": {"type": "boolean"}}, "required": ["n", "ok"],
     "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number", "minimum": 0, "maximum": 1}, "y": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["x", "y"], "additionalProperties": False}}, "required": ["point"],
     "additionalProperties": False},
    {"type": "object", "properties": {"mode": {"const": "fast"}, "level": {"enum": [1, 2, 3]}},
     "required": ["mode", "level"], "additionalProperties": False},
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def _port(parser: str) -> str:
    return "main" if parser == "hermes" else parser


def _tool(schema: dict, name: str = "f") -> dict:
    return {"type": "function", "function": {"name": name, "parameters": schema}}


def _forced(text: str) -> dict:
    """extra_body that makes the model write exactly ``text``."""
    return {"guided_grammar": f"start: {json.dumps(text)}"}


def _stream_final(client, **kw):
    """The stream as the openai client's own helper assembles it."""
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion()


def _calls(message) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


@pytest.mark.parametrize("parser", ["hermes", "mistral", "llama3_json"])
def test_required_calls_validate_against_every_schema(tools_server, parser):
    client = tools_server.openai(_port(parser))
    for i, schema in enumerate(SCHEMAS):
        for choice in ("required", {"type": "function", "function": {"name": "f"}}):
            r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=120, temperature=1.0,
                                               seed=i, tools=[_tool(schema), WEATHER], tool_choice=choice,
                                               parallel_tool_calls=False)
            (c,) = r.choices
            assert c.finish_reason == "tool_calls", (parser, schema, c)
            assert c.message.content is None
            (call,) = c.message.tool_calls
            assert call.id.startswith("call_") and call.type == "function"
            if isinstance(choice, dict):
                assert call.function.name == "f"
            schema_of = schema if call.function.name == "f" else WEATHER["function"]["parameters"]
            jsonschema.validate(json.loads(call.function.arguments), schema_of)


@pytest.mark.parametrize("parser", ["hermes", "mistral", "llama3_json", "native"])
def test_stream_assembles_to_the_same_calls(tools_server, parser):
    client = tools_server.openai(_port(parser))
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=150, temperature=0.9, seed=5, tools=TOOLS,
              tool_choice="required", parallel_tool_calls=False)
    full = client.chat.completions.create(**kw)
    streamed = _stream_final(client, **kw)
    assert _calls(streamed.choices[0].message) == _calls(full.choices[0].message)
    assert len(_calls(full.choices[0].message)) >= 1
    assert streamed.choices[0].finish_reason == full.choices[0].finish_reason == "tool_calls"
    # the raw deltas: the first of each call carries id, type and name, the rest only arguments
    seen: dict[int, int] = {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if tc.index not in seen:
                assert tc.id and tc.type == "function" and tc.function.name
            else:
                assert tc.id is None and tc.function.name is None
            seen[tc.index] = seen.get(tc.index, 0) + 1
    assert len(seen) == len(full.choices[0].message.tool_calls)


@pytest.mark.parametrize("parser,text,content,calls", [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
     "Let me check.", [("get_weather", '{"city": "Paris", "unit": "c"}'), ("add", '{"a": 1, "b": 2}')]),
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', None,
     [("add", '{"a": 1, "b": 2}')]),
    ("hermes", "It is sunny, no call needed.", "It is sunny, no call needed.", []),
    ("mistral", '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", '
                '"arguments": {"city": "Oslo", "unit": "f"}}]', None,
     [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Oslo", "unit": "f"}')]),
    ("llama3_json", '{"name": "add", "parameters": {"a": 4, "b": 5}}', None, [("add", '{"a": 4, "b": 5}')]),
    ("llama3_json", "Paris is sunny.", "Paris is sunny.", []),
])
def test_auto_parses_forced_outputs(tools_server, parser, text, content, calls):
    client = tools_server.openai(_port(parser))
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=200, temperature=0, tools=TOOLS, tool_choice="auto",
              extra_body=_forced(text))
    full = client.chat.completions.create(**kw)
    (c,) = full.choices
    assert c.message.content == content
    assert _calls(c.message) == calls
    assert c.finish_reason == ("tool_calls" if calls else "stop")
    streamed = _stream_final(client, **kw).choices[0]
    assert streamed.message.content == content or (streamed.message.content in (None, "") and not content)
    assert _calls(streamed.message) == calls


def test_auto_grammar_allows_prose_or_a_valid_call(tools_server):
    client = tools_server.openai()
    for seed in range(3):
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=60, temperature=1.0,
                                           seed=seed, tools=TOOLS)
        c = r.choices[0]
        for name, args in _calls(c.message):
            spec = next(t for t in TOOLS if t["function"]["name"] == name)["function"]["parameters"]
            jsonschema.validate(json.loads(args), spec)
        assert c.finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_none_returns_text(tools_server):
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    r = tools_server.openai().chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=100, temperature=0, tools=TOOLS, tool_choice="none",
        extra_body=_forced(text))
    assert r.choices[0].message.content == text and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"


def _history() -> list[dict]:
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]


def test_multi_turn_native_template_matches_transformers(tools_server, tiny_llama_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(tiny_llama_dir)
    expected_text = ref.apply_chat_template(
        [*_history()[:2], {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
         _history()[3]], tools=TOOLS, chat_template=TOOLS_TEMPLATE, tokenize=False, add_generation_prompt=True)
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}' in expected_text
    r = tools_server.openai("native").chat.completions.create(
        model=MODEL, messages=_history(), max_tokens=1, temperature=0, tools=TOOLS)
    assert r.usage.prompt_tokens == len(ref(expected_text, add_special_tokens=False)["input_ids"])
    # the answer after a tool result: the forced reply comes back as content
    r = tools_server.openai("native").chat.completions.create(
        model=MODEL, messages=_history(), max_tokens=50, temperature=0, tools=TOOLS,
        extra_body=_forced("The sum is 3."))
    assert r.choices[0].message.content == "The sum is 3." and r.choices[0].finish_reason == "stop"


def test_multi_turn_default_prompt(tools_server):
    from pagoda.server.chat_rendering import DEFAULT_TOOL_PROMPT

    server = tools_server.openai()
    r = server.chat.completions.create(model=MODEL, messages=_history(), max_tokens=1, temperature=0, tools=TOOLS)
    assert r.choices[0].finish_reason == "length"
    tok: Tokenizer = tools_server.client.info.tokenizer
    # the default rendering: tools in the system prompt, the call in Hermes format, the result as a user turn
    first = DEFAULT_TOOL_PROMPT.split("{functions}")[0]
    text = tok.apply_chat_template([
        {"role": "system", "content": "You are helpful.\n\n" + first + "\n".join(
            json.dumps(t["function"], ensure_ascii=False) for t in TOOLS) + DEFAULT_TOOL_PROMPT.split("{functions}")[1]
            .replace("{example}", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "<city>", "unit": '
                                  '"<unit>"}}\n</tool_call>')},
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'},
        {"role": "user", "content": "<tool_response>\n3\n</tool_response>"}], tokenize=False)
    assert r.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("body,param", [
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_unsupported_fields_are_400(tools_server, body, param):
    r = tools_server.post("/v1/chat/completions",
                          json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_routine_fields_are_accepted(tools_server):
    r = tools_server.post("/v1/chat/completions",  json={
        "model": MODEL, "messages": MESSAGES, "max_tokens": 2, "store": False, "metadata": {"k": "v"},
        "service_tier": "auto", "user": "u1", "parallel_tool_calls": True, "modalities": ["text"]})
    assert r.status_code == 200, r.text


def test_reasoning_split_streamed_and_whole(tools_server):
    client = tools_server.openai("think")
    text = "<think>\nThe user wants weather.\n</think>\n\nIt is sunny in Paris."
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=100, temperature=0, extra_body=_forced(text))
    full = client.chat.completions.create(**kw).choices[0].message
    assert full.content == "It is sunny in Paris."
    assert full.model_extra["reasoning_content"] == full.model_extra["reasoning"] == "\nThe user wants weather.\n"
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices:
            d = chunk.choices[0].delta
            reasoning += (d.model_extra or {}).get("reasoning_content") or ""
            content += d.content or ""
    assert (reasoning, content) == ("\nThe user wants weather.\n", "It is sunny in Paris.")


def test_reasoning_then_tool_call(tools_server):
    client = tools_server.openai("think")
    text = '<think>I need add.</think>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100, temperature=0, tools=TOOLS,
                                       extra_body=_forced(text)).choices[0]
    assert r.message.model_extra["reasoning_content"] == "I need add."
    assert _calls(r.message) == [("add", '{"a": 1, "b": 2}')] and r.message.content is None
