"""Caption throughput: longvid's openai caption backend against an endpoint of known capacity.

Reference ("capacity"): the fake VLM server (tests/caption/vlm_server.py, in its own process on
127.0.0.1) runs at most `--slots` requests at once, each for `--latency` s, so no client can caption
faster than slots/latency clips/s per endpoint (what vLLM's --max-num-seqs and a fixed step give).
Candidate ("longvid"): longvid.caption.stage.caption_shard with caption.backend openai, the whole
stage as a job runs it (reading the table, decoding and JPEG-encoding frames, requests, retries,
the per-clip cache, the output table), on `--clips` rendered shapes clips.
Cases: client concurrency (caption.concurrency per endpoint) = slots, 2*slots and the config's
default (8; with 4 slots that is 2*slots). Timed: the whole caption_shard call (after an untimed
warm-up run), servers started before. Printed per case: clips/s, the ratio to the fault-free
capacity (goal >= 0.95 without faults at the default concurrency), retries (client attempts beyond
one per clip, and the server's injected 500s), output (completion) tokens/s. With fixed latency a
run needs at least ceil(clips / all slots) rounds: pick --clips a multiple of the slots of all
endpoints (60 clips on 2 x 4 slots: at most 0.94). Nothing is asserted about time; a case whose
captions are wrong or missing aborts the bench.

    python bench/caption.py [--clips 60] [--latency 0.2] [--slots 4] [--fail-rate 0.3]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import select
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from longvid.caption.stage import caption_shard
from longvid.io import read_jsonl, write_jsonl
from longvid.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "caption"))
from clipkit import H, W, render_clips, stage_cfg  # noqa: E402  (the caption tests' clips and config)

VLM_SERVER = Path(__file__).resolve().parents[1] / "tests" / "caption" / "vlm_server.py"  # the fake endpoint

FRAMES = 16  # 2 s clips at clipkit's 8 fps: 4 frames sent at caption.fps 2


class Counting(logging.Handler):
    """Counts the backend's warnings (e.g. an endpoint taken out) instead of printing each."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: collections.Counter = collections.Counter()

    def emit(self, record):
        self.counts[" ".join(str(record.msg).split()[:5])] += 1  # the message template, not its URLs


def render(folder: Path, n: int) -> list[dict]:
    """`n` distinct one-shot clips (distinct content: the server's fault draws are per content)."""
    combos = itertools.cycle(itertools.product(SHAPES, COLORS, DIRECTIONS, BACKGROUNDS))
    picked = [{"shape": s, "color": c, "direction": d, "background": b, "start_frame": 0, "end_frame": FRAMES}
              for s, c, d, b in itertools.islice(combos, 0, 5 * n, 5)]
    return render_clips(folder, n, FRAMES, picked)


@contextmanager
def endpoint(stats_file: Path, delay: float, max_concurrency: int, seed: int, fail_rate: float = 0.0):
    """The fake server as its own process (as a real endpoint is: its decoding does not share the
    client's GIL); yields its URL, stops it with SIGTERM (it then writes `stats_file`)."""
    flags = {"delay": delay, "max_concurrency": max_concurrency, "seed": seed, "fail_rate": fail_rate}
    cmd = [sys.executable, str(VLM_SERVER), "--port", "0", "--stats-file", str(stats_file),
           *(x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v)))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        ready = select.select([proc.stdout], [], [], 30)[0]
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            raise SystemExit(f"the fake server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def run_case(tmp: Path, name: str, table: Path, rows: list[dict], servers: list[dict], concurrency: int,
             warnings: Counting) -> dict:
    """One fresh run (fresh servers and cache) of the caption stage; its throughput and retry counts."""
    warnings.counts.clear()
    files = [tmp / f"{name}.server{k}.json" for k in range(len(servers))]
    with ExitStack() as stack:
        urls = [stack.enter_context(endpoint(f, **kw)) for f, kw in zip(files, servers)]
        cfg = stage_cfg(endpoints=urls, concurrency=concurrency, timeout=30)
        out = tmp / f"{name}.jsonl"
        t = time.perf_counter()
        caption_shard(cfg, table, out, name, cache=tmp / f"{name}.cache.jsonl")
        wall = time.perf_counter() - t
    snaps = [json.loads(f.read_text()) for f in files]
    stats = sum((collections.Counter(sn["stats"]) for sn in snaps), collections.Counter())
    # slot-time in use while the client had work out: below 1 = client start-up, tail or turnaround
    span = max(sn["last_answer"] for sn in snaps) - min(sn["first_arrival"] for sn in snaps)
    busy = stats["ok"] * servers[0]["delay"] / (span * sum(kw["max_concurrency"] for kw in servers))
    got = {r["id"]: r for r in read_jsonl(out)}
    wrong = [r["id"] for r in rows if not (got[r["id"]].get("text") or "").startswith(r["truth"])]
    if wrong:
        raise SystemExit(f"{name}: {len(wrong)} clips without their right caption, e.g. {got[wrong[0]]}")
    return {"wall": wall, "attempts": sum(got[r["id"]]["caption_attempts"] for r in rows),
            "completion": sum(got[r["id"]]["caption_tokens"]["completion"] for r in rows), "stats": stats,
            "max_running": [sn["max_running"] for sn in snaps], "warnings": dict(warnings.counts), "busy": busy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per request in a server slot")
    ap.add_argument("--slots", type=int, default=4, help="requests a server processes at once")
    ap.add_argument("--fail-rate", type=float, default=0.3, help="fraction of injected transient 500s")
    ap.add_argument("--no-two-endpoints", action="store_true", help="skip the two-endpoint case")
    args = ap.parse_args()
    warnings = Counting()
    logging.getLogger("longvid").addHandler(warnings)
    logging.getLogger("longvid").propagate = False  # the counts are printed, not every line
    capacity = args.slots / args.latency
    server = {"delay": args.latency, "max_concurrency": args.slots, "seed": 7}
    faulty = {**server, "fail_rate": args.fail_rate}
    kinds = [("clean", [server]), (f"{args.fail_rate:.0%} 500s", [faulty])]
    if not args.no_two_endpoints:
        kinds.append(("two endpoints", [server, {**server, "seed": 8}]))
    # name, servers, client concurrency per endpoint (caption.concurrency), the endpoints' capacity
    default = stage_cfg()["caption"]["concurrency"]
    concs = [("slots", args.slots), ("2*slots", 2 * args.slots)]
    concs = [(f"{label}={default} default" if conc == default else label, conc) for label, conc in concs]
    concs += [] if default in (args.slots, 2 * args.slots) else [(f"default {default}", default)]
    cases = [(f"{kind}, concurrency={label}", servers, conc, capacity * len(servers))
             for kind, servers in kinds for label, conc in concs]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = render(tmp / "clips", args.clips)
        table = tmp / "filtered.jsonl"
        write_jsonl(table, rows)
        write_jsonl(tmp / "warm-up.jsonl", rows[:4])
        run_case(tmp, "warm-up", tmp / "warm-up.jsonl", rows[:4], [server], 2, warnings)  # imports: untimed
        print(f"{args.clips} clips ({FRAMES} frames {W}x{H}, 4 sent per clip); endpoint: {args.slots} slots x "
              f"{args.latency:g} s = capacity {capacity:.1f} clips/s; all captions checked against the shots")
        for kind, servers in kinds:
            if args.clips % (args.slots * len(servers)):
                slots = args.slots * len(servers)
                rounds = -(-args.clips // slots)
                print(f"note: {kind}: {args.clips} clips need {rounds} rounds of {slots} slots: "
                      f"ratio at most {args.clips / (rounds * slots):.3f}")
        print(f"{'case':44s} {'clips/s':>8s} {'capacity':>8s} {'ratio':>6s} {'retries':>7s} {'500s':>5s} "
              f"{'tok/s':>7s} {'busy':>5s}  max running  warnings")
        for k, (name, servers, conc, cap) in enumerate(cases):
            r = run_case(tmp, f"case{k}", table, rows, servers, conc, warnings)
            rate = args.clips / r["wall"]
            print(f"{name:44s} {rate:8.2f} {cap:8.1f} {rate / cap:6.3f} {r['attempts'] - args.clips:7d} "
                  f"{r['stats']['error_500']:5d} {r['completion'] / r['wall']:7.0f} {r['busy']:5.2f}  "
                  f"{str(r['max_running']):11s}  "
                  f"{json.dumps(r['warnings']) if r['warnings'] else '-'}")
    print("ratio: clips/s over the endpoints' capacity (slots/latency each), the goal is >= 0.95 without "
          "faults at the default concurrency; retries: requests beyond one per clip; 500s: injected by the server; "
          "tok/s: output (completion) tokens per second; busy: the share of slot-time in use from the first "
          "request to the last answer")


if __name__ == "__main__":
    main()
