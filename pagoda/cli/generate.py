"""`pagoda generate "prompt"`: one-shot generation, printed as it is produced."""

from __future__ import annotations

import argparse
import sys

from pagoda.cli.sampling_args import add_sampling_args, sampling_params_from_args
from pagoda.engine.args import EngineArgs

HELP = "Generate text for one or more prompts (the chat template is applied unless --raw)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="+", help="prompt text (several prompts run as one batch)")
    parser.add_argument("--raw", action="store_true", help="complete the prompt as is, without the chat template")
    add_sampling_args(parser, max_tokens=128)
    EngineArgs.add_cli_args(parser)


def run(args: argparse.Namespace) -> int:
    from pagoda.entrypoints.llm import LLM
    from pagoda.errors import InvalidRequestError

    options = vars(EngineArgs.from_cli_args(args))
    llm = LLM(**options)
    try:
        params = sampling_params_from_args(args)
        if args.raw:
            outputs = llm.generate(args.prompts, params)
        else:
            outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompts], params)
    except InvalidRequestError as e:
        print(f"error: {e.param}: {e.message}", file=sys.stderr)
        return 2
    for prompt, out in zip(args.prompts, outputs, strict=True):
        if len(args.prompts) > 1:
            print(f"### {prompt}")
        print(out.outputs[0].text)
    return 0
