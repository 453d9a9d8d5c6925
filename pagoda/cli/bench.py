"""`pagoda bench <name>`: a registry of benchmarks, one module per benchmark.

Each module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, like the
top-level subcommands. Adding a benchmark is adding one line to ``BENCH_COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib

HELP = ("benchmarks: serve (load-test any OpenAI server), throughput, prefix, parallel, profile, structured, "
        "sampler, diffusion-accuracy, digits-accuracy, quality, storm, lora, spec")

BENCH_COMMANDS: dict[str, str] = {
    "serve": "pagoda.bench.serve",
    "throughput": "pagoda.bench.throughput",
    "prefix": "pagoda.bench.prefix_cache",
    "parallel": "pagoda.bench.parallel",
    "profile": "pagoda.bench.profile",
    "structured": "pagoda.bench.structured",
    "sampler": "pagoda.bench.sampler",
    "diffusion-accuracy": "pagoda.bench.diffusion_accuracy",
    "digits-accuracy": "pagoda.bench.digits_accuracy",
    "quality": "pagoda.bench.quality",
    "storm": "pagoda.bench.storm",
    "lora": "pagoda.bench.lora_bench",
    "spec": "pagoda.bench.spec_bench",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", required=True)
    for name, module_name in BENCH_COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
