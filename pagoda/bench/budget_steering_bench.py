"""Valid-output share of constrained requests at tight max_tokens: the JSONSchemaBench sample
(``/work/shared/data/jsonschemabench``) and a set of regexes, greedy, on the bundled model.

    PYTHONPATH=<checkout> .venv/bin/python -m pagoda.bench.budget_steering_bench --max-tokens 128 256

Run it from two checkouts (one without budget steering) to compare: the script only uses
``guided_sampling_params``, which steers by default where steering exists. A schema the grammar
backend rejects is counted as rejected, not as invalid.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

import jsonschema

from pagoda import LLM
from pagoda.errors import InvalidRequestError
from pagoda.structured import guided_sampling_params

DATA = "/work/shared/data/jsonschemabench"
REGEXES = [
    (r"[A-Z][a-z]+ [0-9]{2}", "Write a name and an age."),
    (r"[a-z]+(, [a-z]+)*\.", "List some fruits in lowercase."),
    (r"\(([0-9]+ )+\)", "List some numbers in parentheses."),
    (r"[0-9]{4}-[0-9]{2}-[0-9]{2}", "Today's date?"),
    (r"([A-Z][a-z]+ ){3,}[A-Z][a-z]+\.", "A title in capitalised words."),
    (r"(the [a-z]+ )+is [a-z]+\.", "Describe the sky."),
    (r"[a-z]+@[a-z]+\.(com|org)", "An email address."),
    (r'"[^"]{5,}"', "Quote something."),
    (r"(yes|no), because [a-z ]+\.", "Is water wet?"),
    (r"[0-9]+(\.[0-9]+)? (kg|g)", "How heavy is an apple?"),
]


def chat_prompt(llm: LLM, text: str) -> list[int]:
    tok = llm.get_tokenizer()
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False),
                      add_special_tokens=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--every", type=int, default=1, help="use every k-th schema (a quicker sample)")
    args = ap.parse_args()
    llm = LLM(max_num_seqs=64, show_progress=False)
    schemas = []
    for path in sorted(glob.glob(os.path.join(DATA, "*", "*.json"))):
        with open(path) as f:
            schemas.append((path, json.load(f)))
    schemas = schemas[::args.every]
    for max_tokens in args.max_tokens:
        prompts, params, checks, rejected = [], [], [], 0
        for _path, schema in schemas:
            try:
                p = guided_sampling_params(llm, json=schema, max_tokens=max_tokens, temperature=0)
            except InvalidRequestError:
                rejected += 1
                continue
            text = "Write a JSON document that follows this JSON schema:\n" + json.dumps(schema)[:1500]
            prompts.append(chat_prompt(llm, text))
            params.append(p)
            checks.append(("json", schema))
        num_json = len(prompts)
        for regex, question in REGEXES:
            prompts.append(chat_prompt(llm, question))
            params.append(guided_sampling_params(llm, regex=regex, max_tokens=max_tokens, temperature=0))
            checks.append(("regex", regex))
        outs = llm.generate(prompts, params, use_tqdm=False)
        valid = {"json": 0, "regex": 0}
        cut = {"json": 0, "regex": 0}
        for out, (kind, spec) in zip(outs, checks, strict=True):
            o = out.outputs[0]
            cut[kind] += o.finish_reason == "length"
            try:
                if kind == "json":
                    jsonschema.validate(json.loads(o.text), spec)
                    ok = True
                else:
                    ok = re.fullmatch(spec, o.text) is not None
            except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
                ok = False
            valid[kind] += ok
        print(f"max_tokens {max_tokens}: JSON schemas {valid['json']}/{num_json} valid "
              f"({100 * valid['json'] / num_json:.1f}%; {cut['json']} hit max_tokens; {rejected} rejected by the "
              f"backend); regexes {valid['regex']}/{len(REGEXES)} valid ({cut['regex']} hit max_tokens)", flush=True)


if __name__ == "__main__":
    main()
