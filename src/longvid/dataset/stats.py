"""Dataset statistics: a JSON summary and histograms (duration, frames, resolution, caption length).

Caption quality (train + val rows' `text`): `caption_words` and `caption_t5_tokens` distributions;
`caption_tokens` {limit, t5_exact, over, captions, share_over}: how many captions the text encoder
would truncate (T5 tokens > `caption.max_text_tokens`, CogVideoX: 226); `caption_status`: the
caption backend's status counts (ok/truncated/blocked/error) of the kept clips, {} when the rows carry
none (passthrough). A row's T5 count is the caption stage's (`caption_tokens.t5`, or `t5_est` when it
was estimated) when its shard row has one, else estimated here with the caption stage's documented
formula (`t5_estimate`: stages share files, not imports; tests/dataset checks the two agree);
`t5_exact` is true only when every count is exact.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path

import numpy as np

from longvid.io import atomic_path, write_json

# The text encoder's limit when the dataset stage's config has no `caption` section (the schema's
# default of caption.max_text_tokens: CogVideoX's T5 limit).
DEFAULT_MAX_TEXT_TOKENS = 226
CAPTION_STATUSES = ("ok", "truncated", "blocked", "error")
WORD = re.compile(r"[\w'’-]+")
PUNCT = re.compile(r"[^\w\s'’-]")

PLOTS = {
    "duration": ("duration", "clip duration (s)"),
    "num_frames": ("num_frames", "frames per clip"),
}


def summarize(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values, float)
    return {"count": int(a.size), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "total": float(a.sum())}


def text_token_limit(cfg: dict) -> int:
    """`caption.max_text_tokens` of a stage config, or DEFAULT_MAX_TEXT_TOKENS without that section."""
    return int((cfg.get("caption") or {}).get("max_text_tokens") or DEFAULT_MAX_TEXT_TOKENS)


def caption_words(text: str) -> int:
    return len(text.split())


def t5_estimate(text: str) -> int:
    """T5 tokens of `text`, estimated as longvid.caption.quality.t5_estimate does: ceil(1.3 x words +
    punctuation marks) + 1 (the closing </s>); 0 for an empty text."""
    if not text.strip():
        return 0
    return math.ceil(1.3 * len(WORD.findall(text)) + len(PUNCT.findall(text))) + 1


def t5_counts(rows: list[dict], all_clips: list[dict] = ()) -> tuple[list[int], bool]:
    """(T5 tokens of each row's `text`, whether all were counted exactly): the caption stage's count
    from the clip's shard row (`caption_tokens`) when it has one, else estimated."""
    stage = {}
    for c in all_clips:
        tokens = c.get("caption_tokens") or {}
        for key, exact in (("t5", True), ("t5_est", False)):
            if isinstance(tokens.get(key), int) and not isinstance(tokens[key], bool):
                stage[c.get("id")] = (tokens[key], exact)
                break
    counts, all_exact = [], True
    for r in rows:
        n, exact = stage.get(r.get("id")) or (t5_estimate(r["text"]), False)
        counts.append(n)
        all_exact = all_exact and exact
    return counts, all_exact


def caption_quality(rows: list[dict], all_clips: list[dict], limit: int) -> dict:
    """The caption part of the stats (see the module doc)."""
    t5, exact = t5_counts(rows, all_clips)
    over = sum(n > limit for n in t5)
    status = collections.Counter(c["caption_status"] for c in all_clips if c.get("keep") and c.get("caption_status"))
    return {
        "caption_words": summarize([caption_words(r["text"]) for r in rows]),
        "caption_t5_tokens": summarize(t5),
        "caption_tokens": {"limit": limit, "t5_exact": exact, "over": over, "captions": len(t5),
                           "share_over": over / len(t5) if t5 else 0.0},
        "caption_status": {k: status[k] for k in [*CAPTION_STATUSES, *sorted(set(status) - set(CAPTION_STATUSES))]
                           if status[k]},
    }


def compute(train: list[dict], val: list[dict], all_clips: list[dict],
            max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> dict:
    rows = train + val
    reasons = collections.Counter(
        reason.split(":")[0].split(" ")[0] for c in all_clips for reason in c.get("reject_reasons") or []
    )
    return {
        "clips": {"train": len(train), "val": len(val), "scanned": len(all_clips),
                  "rejected": sum(not c.get("keep") for c in all_clips),
                  "uncaptioned": sum(bool(c.get("keep") and c.get("caption_error")) for c in all_clips)},
        "reject_reasons": dict(reasons),
        "hours": sum(r["duration"] for r in rows) / 3600,
        "duration": summarize([r["duration"] for r in rows]),
        "num_frames": summarize([r["num_frames"] for r in rows]),
        **caption_quality(rows, all_clips, max_text_tokens),
        "resolutions": dict(collections.Counter(f"{r['width']}x{r['height']}" for r in rows)),
    }


def plot(rows: list[dict], out_dir: Path, max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
         all_clips: list[dict] = ()) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    series = {
        "duration": [r["duration"] for r in rows],
        "num_frames": [r["num_frames"] for r in rows],
    }
    paths = []
    for name, values in series.items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.hist(values, bins=20, color="#4c72b0")
        ax.set_xlabel(PLOTS[name][1])
        ax.set_ylabel("clips")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{name}.png"))
        plt.close(fig)
    paths.append(_caption_plot(plt, rows, out_dir / "caption_tokens.png", max_text_tokens, all_clips))
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.scatter([r["width"] for r in rows], [r["height"] for r in rows], s=12, alpha=0.5, color="#dd8452")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "resolution.png"))
    plt.close(fig)
    return paths


def _caption_plot(plt, rows: list[dict], path: Path, limit: int, all_clips: list[dict]) -> Path:
    """Caption length in words and in T5 tokens, the encoder's limit a dashed line on the latter."""
    t5, exact = t5_counts(rows, all_clips)
    fig, (words_ax, t5_ax) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    words_ax.hist([caption_words(r["text"]) for r in rows], bins=20, color="#4c72b0")
    words_ax.set_xlabel("caption length (words)")
    words_ax.set_ylabel("clips")
    t5_ax.hist(t5, bins=20, color="#55a868")
    t5_ax.axvline(limit, color="#c44e52", linestyle="--", linewidth=1.2, label=f"limit {limit}")
    t5_ax.set_xlabel(f"caption length (T5 tokens{'' if exact else ', estimated'})")
    t5_ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write(stats: dict, path: Path) -> None:
    write_json(path, stats)
