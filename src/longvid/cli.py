"""`longvid <stage> ...`: one subcommand per pipeline stage (and a few tools); every rule runs one.

A subcommand is the module `longvid.stages.<name>`: its docstring is the help, `add_arguments`
its flags, `run(args) -> int | None` the work. Only the chosen stage's module is imported, and it
imports its heavy dependencies (torch, cv2, dvc) itself. An InputError becomes one line on stderr
and exit status 2; run with `python -m longvid` or the `longvid` script.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from longvid.io import LOG_DATEFMT, LOG_FORMAT, InputError

# subcommand -> module under longvid.stages, in pipeline order; then the tools.
STAGES = ["fetch", "shard", "probe", "split", "filter", "caption", "dataset", "publish",
          "encode", "train", "sample", "evaluate", "report"]
TOOLS = ["viz-data", "runtime-report", "config"]


def stage_module(name: str):
    return importlib.import_module(f"longvid.stages.{name.replace('-', '_')}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's flags are built (the others get one line)."""
    parser = argparse.ArgumentParser(prog="longvid", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name in STAGES + TOOLS:
        module = stage_module(name)
        summary = module.__doc__.strip().split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
        if only is not None and name != only:
            sub.add_parser(name, help=summary)
            continue
        p = sub.add_parser(name, help=summary, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
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
