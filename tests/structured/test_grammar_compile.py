"""Compiling specs with the llguidance backend: errors name the problem, results are cached."""

from __future__ import annotations

import pytest

from pagoda.errors import InvalidRequestError
from pagoda.structured import GrammarCompiler, GuidedDecodingParams, compiler_for, guided_logits_processor


@pytest.mark.parametrize("spec, param, words", [
    (GuidedDecodingParams(regex="[a-"), "guided_regex", ["regular expression", "unclosed character class"]),
    (GuidedDecodingParams(json={"type": "foo"}), "guided_json", ["JSON schema", "foo"]),
    (GuidedDecodingParams(json={"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}),
     "guided_json",
     ["oneOf"]),
    (GuidedDecodingParams(json={"type": "object", "dependencies": {"a": ["b"]}}), "guided_json",
     ["dependencies"]),
    (GuidedDecodingParams(grammar="start: undefined_rule"), "guided_grammar", ["grammar", "undefined_rule"]),
    (GuidedDecodingParams(grammar='root ::= "a" (', ), "guided_grammar", ["grammar"]),
    (GuidedDecodingParams(regex="a", backend="nope"), "guided_decoding_backend", ["nope"]),
])
def test_invalid_or_unsupported_specs_raise_naming_the_problem(default_tokenizer, spec, param, words):
    with pytest.raises(InvalidRequestError) as info:
        guided_logits_processor(spec, default_tokenizer)
    assert info.value.param == param
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("spec", [
    GuidedDecodingParams(grammar='root ::= "yes" | "no"'),  # GBNF
    GuidedDecodingParams(grammar='start: expr\nexpr: NUMBER ("+" NUMBER)*\nNUMBER: /[0-9]+/'),  # Lark
    GuidedDecodingParams(json={"type": "string", "format": "email"}),
    GuidedDecodingParams(json_object=True, whitespace="flexible"),
])
def test_valid_specs_compile(default_tokenizer, spec):
    assert guided_logits_processor(spec, default_tokenizer).spec == spec


def test_compiles_once_per_spec(default_tokenizer):
    compiler = GrammarCompiler(default_tokenizer, cache_size=2)
    a, b, c = (GuidedDecodingParams(regex=r) for r in ("a+", "b+", "c+"))
    first = compiler.compile(a)
    assert compiler.compile(GuidedDecodingParams(regex="a+")) is first
    assert compiler.num_compiled == 1
    compiler.compile(b)
    compiler.compile(c)  # evicts a (least recently used)
    assert compiler.compile(a) is not first and compiler.num_compiled == 4
    assert compiler_for(default_tokenizer) is compiler_for(default_tokenizer)
