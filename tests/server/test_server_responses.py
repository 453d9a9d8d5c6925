"""/v1/responses (stateless) through the real `openai` client: text, instructions, JSON schema,
function tools, multi-turn with function outputs, streaming events, and the 400s of stored state."""

from __future__ import annotations

import json

import jsonschema
import pytest
from live_server import MODEL

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "n": {"enum": [1, 2]}},
          "required": ["city", "n"], "additionalProperties": False}
ADD = {"type": "function", "name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a", "b"], "additionalProperties": False}}


def _forced(text: str) -> dict:
    return {"guided_grammar": f"start: {json.dumps(text)}"}


def test_text_round_trip_matches_chat(tools_server):
    client = tools_server.openai()
    r = client.responses.create(model=MODEL, input="Hello there", instructions="Be terse.", max_output_tokens=12,
                                temperature=0)
    assert r.object == "response" and r.status in ("completed", "incomplete")
    chat = client.chat.completions.create(model=MODEL, max_completion_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello there"}])
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert (r.status == "incomplete") == (chat.choices[0].finish_reason == "length")


def test_json_schema_format(tools_server):
    r = tools_server.openai().responses.create(
        model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": "A city?"}]}],
        max_output_tokens=80, temperature=1.0,
        text={"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), SCHEMA)


def test_function_call_and_multi_turn(tools_server):
    client = tools_server.openai()
    r = client.responses.create(model=MODEL, input="Add 2 and 3", tools=[ADD], tool_choice="required",
                                max_output_tokens=60, temperature=1.0)
    (call,) = [item for item in r.output if item.type == "function_call"]
    assert call.name == "add" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
    # the conversation goes on statelessly: the call and its output are sent back as input items
    follow = client.responses.create(
        model=MODEL, tools=[ADD], max_output_tokens=30, temperature=0, extra_body=_forced("It is 5."),
        input=[{"role": "user", "content": "Add 2 and 3"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "5"}])
    assert follow.output_text == "It is 5." and follow.status == "completed"


def test_stream_events_assemble_to_the_response(tools_server):
    client = tools_server.openai()
    kw = dict(model=MODEL, input="Add 2 and 3", tools=[ADD], max_output_tokens=80, temperature=0,
              extra_body=_forced('Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'))
    whole = client.responses.create(**kw)
    assert [i.type for i in whole.output] == ["message", "function_call"]
    assert whole.output_text == "Sure." and whole.output[1].arguments == '{"a": 2, "b": 3}'
    with client.responses.stream(**kw) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "response.function_call_arguments.delta" in types
    assert final.output_text == whole.output_text
    assert [(i.type, getattr(i, "arguments", None)) for i in final.output] == \
        [(i.type, getattr(i, "arguments", None)) for i in whole.output]


@pytest.mark.parametrize("body,param", [
    ({"store": True}, "store"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"text": {"format": {"type": "yaml"}}}, "text"),
])
def test_unsupported_is_400(tools_server, body, param):
    r = tools_server.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
