"""JSON-schema outputs on the default model: the 112 JSONSchemaBench schemas and our own set.

Every output that finishes with reason 'stop' must parse and validate (``jsonschema``); schemas the
backend rejects are counted and listed per subset (a finding, not a failure). All requests of a
test go in ONE ``generate`` call so they decode together.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import jsonschema
import pytest

from pagoda.errors import InvalidRequestError
from pagoda.structured import guided_sampling_params

pytestmark = pytest.mark.slow

# the project's shared data sits beside the checkout (../shared); clones elsewhere find it at /work/shared
DATA = next((p for p in (Path(__file__).resolve().parents[3] / "shared" / "data" / "jsonschemabench",
                         Path("/work/shared/data/jsonschemabench")) if p.is_dir()),
            Path("/work/shared/data/jsonschemabench"))
MAX_TOKENS = 300

OWN = {
    "nested_objects": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 20},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["city", "zip"], "additionalProperties": False}},
                 "required": ["name", "address"], "additionalProperties": False}},
        "required": ["user"], "additionalProperties": False},
    "bounded_array": {"type": "object", "properties": {
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 10},
                   "minItems": 2, "maxItems": 4}},
        "required": ["scores"], "additionalProperties": False},
    "enums": {"type": "object", "properties": {
        "colour": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["S", "M", "L", 42, None]}},
        "required": ["colour", "size"], "additionalProperties": False},
    "patterns": {"type": "object", "properties": {
        "date": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
        "required": ["date", "code"], "additionalProperties": False},
    "numeric_ranges": {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 18, "maximum": 65},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "temperature": {"type": "number", "minimum": -40.5, "maximum": 50}},
        "required": ["age", "ratio", "temperature"], "additionalProperties": False},
    "optional_fields": {"type": "object", "properties": {
        "id": {"type": "integer"}, "nickname": {"type": "string", "maxLength": 12},
        "verified": {"type": "boolean"}},
        "required": ["id"], "additionalProperties": False},
    "refs": {"type": "object", "$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"], "additionalProperties": False}},
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"], "additionalProperties": False},
    "any_of_and_const": {"type": "object", "properties": {
        "kind": {"const": "event"},
        "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 8}]}},
        "required": ["kind", "value"], "additionalProperties": False},
}


def _prompt(tokenizer, schema: dict) -> list[int]:
    # a short description of the schema: the grammar does the rest (and prefill stays cheap)
    conversation = [{"role": "system", "content": "You are a helpful assistant that answers in JSON."},
                    {"role": "user", "content": f"Give an example JSON instance of this schema: {json.dumps(schema)[:300]}"}]
    return tokenizer.encode(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)


def _generate_and_check(llm, named_schemas: dict[str, tuple[str, dict]]):
    """Compiles each schema (rejections counted per subset), generates all in one batch, validates."""
    tok = llm.engine.tokenizer
    rejected: dict[str, list[str]] = collections.defaultdict(list)
    prompts, params, names = [], [], []
    for name, (subset, schema) in named_schemas.items():
        try:
            params.append(guided_sampling_params(llm, json=schema, max_tokens=MAX_TOKENS, temperature=0.6, seed=0))
        except InvalidRequestError as exc:
            rejected[subset].append(f"{name}: {exc.message.splitlines()[0][:120]}")
            continue
        prompts.append(_prompt(tok, schema))
        names.append(name)
    outs = llm.generate(prompts, params, use_tqdm=False)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, out in zip(names, outs, strict=True):
        subset, schema = named_schemas[name]
        c = out.outputs[0]
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.text), schema)  # the guarantee: raises if broken
            counts[subset]["valid"] += 1
        else:
            counts[subset][c.finish_reason] += 1
    return rejected, counts


def test_jsonschemabench_112(default_llm):
    files = sorted(DATA.glob("*/*.json"))
    assert len(files) == 112, f"expected the 112 JSONSchemaBench schemas under {DATA}"
    schemas = {f"{f.parent.name}/{f.name}": (f.parent.name, json.loads(f.read_text())) for f in files}
    rejected, counts = _generate_and_check(default_llm, schemas)
    print("\nsubset            total compiled rejected valid length")
    totals = collections.Counter()
    for subset in sorted({s for s, _ in schemas.values()}):
        total = sum(1 for s, _ in schemas.values() if s == subset)
        row = (total, total - len(rejected[subset]), len(rejected[subset]), counts[subset]["valid"],
               counts[subset]["length"])
        totals.update(dict(zip(("total", "compiled", "rejected", "valid", "length"), row, strict=True)))
        print(f"{subset:17} {row[0]:5d} {row[1]:8d} {row[2]:8d} {row[3]:5d} {row[4]:6d}")
        for reason in rejected[subset]:
            print("    rejected", reason)
    print(f"all               {totals['total']:5d} {totals['compiled']:8d} {totals['rejected']:8d} "
          f"{totals['valid']:5d} {totals['length']:6d}")
    assert totals["compiled"] >= 95  # llguidance's coverage of this sample (13 rejected as of 1.9)
    # Measured: 39-47 of 99 finish within 300 tokens (0 invalid; the count moves with bf16 rounding, as
    # the draws are seeded samples). The rest hit the length limit: most of these schemas allow
    # additional properties, and the 135M model nests invented keys ({"type":{"type":...) until it runs
    # out; more tokens do not help it. The bound only keeps the validity check from being vacuous.
    assert totals["valid"] >= 0.3 * totals["compiled"]


def test_own_schemas(default_llm):
    rejected, counts = _generate_and_check(default_llm, {k: ("own", v) for k, v in OWN.items()})
    assert not rejected
    assert counts["own"]["valid"] == len(OWN), counts
