"""Sampling options shared by the generation subcommands."""

from __future__ import annotations

import argparse

from pagoda.sampling_params import SamplingParams

GREEDY = 0.0  # the command line samples greedily unless told otherwise (the API's default is 1.0)


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    """``SamplingParams``' own defaults, but for temperature and the subcommand's ``max_tokens``."""
    d = SamplingParams
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens)
    g.add_argument("--temperature", type=float, default=GREEDY, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--top-k", type=int, default=d.top_k)
    g.add_argument("--min-p", type=float, default=d.min_p)
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    g.add_argument("--stop", action="append", default=d.stop, help="stop string (repeatable)")


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          stop=args.stop)
