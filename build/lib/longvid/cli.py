"""`longvid <stage> ...`: one subcommand per pipeline stage (and a few tools); every rule runs one.

The stages are the table in longvid.stages; a tool is a module `longvid.stages.<tool>` (docstring:
the help, `add_arguments`: its flags, `run(args)`: the work). Only the chosen subcommand's code is
imported, so `longvid --help` stays fast. An InputError becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from longvid.io import LOG_DATEFMT, LOG_FORMAT, InputError
from longvid.stages import BY_NAME

STAGES = list(BY_NAME)  # in pipeline order
TOOLS = ["viz-data", "runtime-report", "config"]  # modules longvid.stages.<name>


def subcommand(name: str, full: bool = False):
    """(summary, description, add_arguments, run) of a stage or tool; `full`: the description
    includes the stage's library docstring (which imports it)."""
    if name in BY_NAME:
        stage = BY_NAME[name]
        module, function = stage.entry.split(":")
        text = f"{stage.summary}.\n\nThe work is {module}.{function}."
        if full:
            text += "\n\n" + (importlib.import_module(module).__doc__ or "").strip()
        return stage.summary, text, stage.add_arguments, stage.run
    module = importlib.import_module(f"longvid.stages.{name.replace('-', '_')}")
    summary = module.__doc__.strip().split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
    return summary, module.__doc__, module.add_arguments, module.run


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's flags are built (the others get one line)."""
    parser = argparse.ArgumentParser(prog="longvid", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name in STAGES + TOOLS:
        summary, description, add_arguments, run = subcommand(name, full=name == only)
        if only is not None and name != only:
            sub.add_parser(name, help=summary)
            continue
        p = sub.add_parser(name, help=summary, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=stage if stage in STAGES + TOOLS else "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT,
                        datefmt=LOG_DATEFMT)
    try:
        return int(args._run(args) or 0)
    except InputError as e:
        print(f"longvid {args.stage}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
