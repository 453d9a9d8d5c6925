"""Structured outputs through the OpenAI-compatible server (tiny model, real openai client), and
pagoda.lang's server backend."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args  # noqa: E402

from pagoda import lang  # noqa: E402
from pagoda.lang.server_backend import ServerBackend  # noqa: E402
from pagoda.server.config import ServerConfig  # noqa: E402
from pagoda.server.engine_process_client import EngineProcessClient  # noqa: E402

SCHEMA = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["colour", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    client = EngineProcessClient(tiny_engine_args(tiny_llama_dir))
    client.start()
    s = LiveServer(client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY, max_waiting=1000)})
    yield s
    s.stop()
    client.shutdown()


def test_chat_response_format_json_schema_and_json_object(server):
    client = server.openai()
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello world"}], max_tokens=60, temperature=0.9, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}})
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "JSON"}],
                                         max_tokens=200, temperature=0, response_format={"type": "json_object"})
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    else:
        assert out.choices[0].message.content.startswith("{")


def test_completions_extensions_and_streaming(server):
    client = server.openai()
    out = client.completions.create(model=MODEL, prompt="Call", max_tokens=20, temperature=1.0, n=3, seed=3,
                                    extra_body={"guided_regex": r"\d{3}-\d{4}"})
    assert all(re.fullmatch(r"\d{3}-\d{4}", c.text, re.ASCII) for c in out.choices)
    out = client.completions.create(model=MODEL, prompt="Pick", max_tokens=10, temperature=1.0,
                                    extra_body={"guided_choice": ["yes", "no", "maybe"]})
    assert out.choices[0].text in ("yes", "no", "maybe")
    out = client.completions.create(model=MODEL, prompt="List", max_tokens=60, temperature=0.5,
                                    extra_body={"guided_grammar": 'root ::= "[" [a-c] ("," [a-c])* "]"'})
    assert re.fullmatch(r"\[[a-c](,[a-c])*\]", out.choices[0].text)
    chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True,
                                            max_tokens=60, extra_body={"guided_json": SCHEMA})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("body, param, words", [
    ({"guided_regex": "(unclosed"}, "guided_regex", ["regular expression"]),
    ({"guided_json": {"type": "nonsense"}}, "guided_json", ["nonsense"]),
    ({"guided_json": {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 2}]}}, "guided_json",
     ["oneOf"]),
    ({"guided_grammar": "start: missing_rule"}, "guided_grammar", ["missing_rule"]),
    ({"guided_choice": "yes"}, "guided_choice", ["list"]),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", ["at most one"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", ["schema"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format", ["bogus"]),
    ({"response_format": {"type": "yaml"}}, "response_format", ["yaml"]),
])
def test_invalid_specs_are_400_naming_the_problem(server, body, param, words):
    for path, base in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        r = server.post(path, json={"model": MODEL, "max_tokens": 5, **base, **body})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param, error
        for word in words:
            assert word in error["message"], error
    with pytest.raises(openai.BadRequestError):
        server.openai().completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body=body)
    server.wait_idle()


def test_lang_program_on_the_server(server):
    @lang.function
    def prog(s, q):
        s += lang.user(q)
        s += lang.assistant(lang.gen("code", regex=r"[A-Z]{2}\d{2}") + " " + lang.select("v", ["yes", "no"]))

    backend = ServerBackend(server.url, api_key=API_KEY)
    states = prog.run_batch([{"q": "Hello"}, {"q": "World"}], backend=backend, progress_bar=False)
    for s in states:
        assert re.fullmatch(r"[A-Z]{2}\d{2}", s["code"], re.ASCII)
        assert s["v"] in ("yes", "no") and len(s.scores("v")) == 2
    server.wait_idle()
