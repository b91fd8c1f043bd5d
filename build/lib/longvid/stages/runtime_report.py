"""How much of a training run's wall time went to training, queueing, preemption and restarts, and
how many steps were trained twice, from the trainer's logs (every attempt's)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("logs", nargs="+", help="log files, or directories searched for *.log/*.out/*.err/*.txt")
    p.add_argument("--now", action="store_true", help="count the time since the last log line as an ongoing interruption")
    p.add_argument("--idle-minutes", type=float, default=5.0, help="with --now: silence longer than this is an interruption")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")


def run(args) -> int:
    import datetime as dt

    from longvid.io import write_json
    from longvid.train.accounting import format_text, report

    rep = report(args.logs, now=dt.datetime.now() if args.now else None, idle_minutes=args.idle_minutes)
    print(format_text(rep))
    if args.json:
        write_json(args.json, rep)
    return 0
