"""Tool-call and reasoning parsers on strings, and the grammars they build, with no server.

The streaming contract: over every prefix of an output, content and arguments only grow and the
final parse is what the stream assembles to."""

from __future__ import annotations

import json

import pytest

from pagoda.server.chat_output import ChatOutput
from pagoda.server.reasoning_parser import reasoning_parser_for
from pagoda.server.tool_parsers import TOOL_PARSERS, FunctionSpec, tool_parser_for
from pagoda.structured.grammar_compiler import compiler_for
from pagoda.structured.guided_decoding_params import GuidedDecodingParams

CALLS = [("get_weather", '{"city": "Paris", "unit": "c"}'), ("add", '{"a": 1, "b": [2, {"c": "}"}]}')]
SCHEMAS = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["city", "unit"], "additionalProperties": False},
    "add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array"}},
            "required": ["a", "b"], "additionalProperties": False},
}
FUNCTIONS = [FunctionSpec(name, schema) for name, schema in SCHEMAS.items()]


def _stream(output: ChatOutput, text: str, step: int) -> tuple[str, str, list[tuple[str, str]]]:
    """Feeds ``text`` in pieces of ``step`` characters and assembles the deltas as a client does."""
    content, reasoning, calls = "", "", {}
    pieces = [text[i:i + step] for i in range(0, len(text), step)] or [""]
    for k, piece in enumerate(pieces):
        d = output.feed(piece, final=k == len(pieces) - 1)
        content += d.content
        reasoning += d.reasoning
        for c in d.calls:
            if c.id is not None:
                assert c.index == len(calls) and c.name
                calls[c.index] = [c.name, ""]
            calls[c.index][1] += c.arguments
    return content, reasoning, [tuple(v) for v in calls.values()]


# Llama 3 JSON calls are the whole answer: no prose before them
@pytest.mark.parametrize("name,prose", [(n, p) for n in sorted(TOOL_PARSERS) for p in ("", "Let me look that up.")
                                        if not (n == "llama3_json" and p)])
def test_render_parse_round_trip_and_stream(name, prose):
    parser = TOOL_PARSERS[name]()
    text = (prose + "\n" if prose else "") + parser.render_calls(CALLS)
    final = parser.parse(text, final=True)
    assert final.content == prose
    assert [(c.name, c.arguments) for c in final.calls] == CALLS and all(c.complete for c in final.calls)
    for step in (1, 2, 7, len(text)):
        out = ChatOutput(parser)
        assert _stream(out, text, step) == (prose, "", CALLS)
        assert out.message_content() == (prose or None) and out.finish_reason("stop") == "tool_calls"


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
def test_prose_only_is_content(name):
    parser = TOOL_PARSERS[name]()
    text = "No call needed: it is sunny <b>today</b> [ok]."
    for step in (1, 3):
        out = ChatOutput(parser)
        assert _stream(out, text, step) == (text, "", [])
        assert out.finish_reason("stop") == "stop"


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize("mode", ["required", "named", "auto"])
def test_grammar_accepts_calls_and_rejects_invalid_arguments(name, mode, tiny_tokenizer):
    parser = TOOL_PARSERS[name]()
    functions = FUNCTIONS[:1] if mode == "named" else FUNCTIONS
    compiled = compiler_for(tiny_tokenizer).compile(GuidedDecodingParams(grammar=parser.grammar(functions, mode,
                                                                                                True)))

    def accepts(text: str) -> bool:
        m = compiled.new_matcher()
        return m.accept_tokens(tiny_tokenizer.encode(text, add_special_tokens=False)) and m.is_accepting()

    good = [("get_weather", '{"city": "Paris", "unit": "c"}')] + ([] if mode == "named" else [("add", '{"a": 1, "b": []}')])
    assert accepts(parser.render_calls(good))
    assert not accepts(parser.render_calls([("get_weather", '{"city": "Paris", "unit": "k"}')]))
    assert not accepts(parser.render_calls([("nope", '{}')]))
    assert accepts("It is sunny.") == (mode == "auto")


def test_parser_from_template():
    assert tool_parser_for(None, "{{ '<tool_call>' }}").name == "hermes"
    assert tool_parser_for(None, "[TOOL_CALLS]").name == "mistral"
    assert tool_parser_for(None, "<|python_tag|>").name == "llama3_json"
    assert tool_parser_for(None, None).name == "hermes"
    assert tool_parser_for("mistral", "<tool_call>").name == "mistral"
    with pytest.raises(ValueError, match="unknown tool call parser"):
        tool_parser_for("nope", None)


@pytest.mark.parametrize("starts_inside", [False, True])
def test_reasoning_stream(starts_inside):
    parser = reasoning_parser_for("think")
    body = "\nI should call add.\n</think>\n\nThe answer: 3 <b>"
    text = body if starts_inside else "<think>" + body
    for step in (1, 4, len(text)):
        out = ChatOutput(None, parser, starts_inside)
        assert _stream(out, text, step) == ("The answer: 3 <b>", "\nI should call add.\n", [])
    # no reasoning block at all: everything is content
    out = ChatOutput(None, parser)
    assert _stream(out, "Plain <thin answer", 1) == ("Plain <thin answer", "", [])
    assert out.reasoning is None


def test_constraint_applies_after_reasoning(tiny_tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    for inside, ok, bad in [
        (False, ['<think>free {text "</think>\n{"a":"b"}', '{"a":"b"}'], ['<think>x</think> hi', 'hi']),
        (True, ['free {text</think>\n\n{"a":"b"}'], ['{"a":"b"}</think>hi', 'x</think>{"b":1}']),
    ]:
        spec = GuidedDecodingParams(json=schema, reasoning=("<think>", "</think>", inside))
        compiled = compiler_for(tiny_tokenizer).compile(spec)
        for text, expected in [(t, True) for t in ok] + [(t, False) for t in bad]:
            m = compiled.new_matcher()
            got = m.accept_tokens(tiny_tokenizer.encode(text, add_special_tokens=False)) and m.is_accepting()
            assert got == expected, (inside, text)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama_dir):
    from pagoda.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(tiny_llama_dir)


def test_string_encoded_arguments_are_decoded():
    parser = TOOL_PARSERS["hermes"]()
    text = '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>'
    out = ChatOutput(parser)
    assert _stream(out, text, 3) == ("", "", [("add", '{"a": 1}')])
    assert json.loads(out.calls[0].arguments) == {"a": 1}
