"""`pagoda chat`: an interactive conversation, tokens streamed as they are produced."""

from __future__ import annotations

import argparse
import sys

from pagoda.cli.sampling_args import add_sampling_args, sampling_params_from_args
from pagoda.engine.args import EngineArgs

HELP = "Chat with the model interactively (tokens streamed as produced; empty line or Ctrl-D quits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", default=None, help="system prompt")
    add_sampling_args(parser, max_tokens=256)
    EngineArgs.add_cli_args(parser)


def run(args: argparse.Namespace) -> int:
    from pagoda.engine.engine_factory import build_engine
    from pagoda.errors import InvalidRequestError

    engine = build_engine(EngineArgs.from_cli_args(args))
    params = sampling_params_from_args(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    turn = 0
    while True:
        if interactive:
            print(">>> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        request_id = f"chat-{turn}"
        turn += 1
        try:
            engine.add_request(request_id, engine.tokenizer.encode(prompt, add_special_tokens=False), params)
        except InvalidRequestError as e:
            print(f"error: {e.param}: {e.message}", file=sys.stderr)
            messages.pop()
            continue
        shown = 0
        reply = ""
        while engine.has_unfinished_requests():
            for out in engine.step():
                reply = out.outputs[0].text
                print(reply[shown:], end="", flush=True)
                shown = len(reply)
        print(flush=True)
        messages.append({"role": "assistant", "content": reply})
