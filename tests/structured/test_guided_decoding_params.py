from __future__ import annotations

import pytest

from pagoda.errors import InvalidRequestError
from pagoda.structured import GuidedDecodingParams


def test_schema_dict_becomes_hashable_json_keeping_key_order():
    a = GuidedDecodingParams(json={"type": "object", "properties": {"b": {}, "a": {}}})
    b = GuidedDecodingParams(json='{"type":"object","properties":{"b":{},"a":{}}}')
    assert a == b and hash(a) == hash(b)
    assert list(a.schema["properties"]) == ["b", "a"]
    assert a.kind == "json" and a.param == "guided_json" and a.whitespace == "compact"


def test_kinds_and_params():
    assert GuidedDecodingParams(json_object=True).schema == {"type": "object"}
    assert GuidedDecodingParams(regex="a+").param == "guided_regex"
    choice = GuidedDecodingParams(choice=["x", "y"])
    assert choice.choice == ("x", "y") and choice.kind == "choice"
    assert GuidedDecodingParams(grammar='start: "a"').kind == "grammar"


@pytest.mark.parametrize("kwargs, param", [
    ({}, "guided_decoding"),
    ({"regex": "a", "choice": ["a"]}, "guided_decoding"),
    ({"json": "{not json"}, "guided_json"),
    ({"json": "[1, 2]"}, "guided_json"),
    ({"choice": []}, "guided_choice"),
    ({"choice": "ab"}, "guided_choice"),
    ({"choice": ["a", 1]}, "guided_choice"),
    ({"regex": ""}, "guided_regex"),
    ({"regex": "a", "whitespace": "loose"}, "guided_decoding"),
])
def test_invalid_specs_name_the_field(kwargs, param):
    with pytest.raises(InvalidRequestError) as info:
        GuidedDecodingParams(**kwargs)
    assert info.value.param == param
