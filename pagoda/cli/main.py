"""The `pagoda` command: one module per subcommand, registered in COMMANDS.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules keep heavy imports (torch, the engine) inside ``run`` so
that ``pagoda --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module. Adding a subcommand is adding one line here.
COMMANDS: dict[str, str] = {
    "generate": "pagoda.cli.generate",
    "chat": "pagoda.cli.chat",
    "image": "pagoda.cli.image",
    "serve": "pagoda.cli.serve",
    "bench": "pagoda.cli.bench",
    "plan": "pagoda.cli.plan",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagoda", description="Pagoda inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
