"""Dataset statistics: a JSON summary and histograms (duration, frames, resolution, caption length)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from longvid.io import atomic_path, write_json

PLOTS = {
    "duration": ("duration", "clip duration (s)"),
    "num_frames": ("num_frames", "frames per clip"),
    "caption_length": ("caption_words", "caption length (words)"),
}


def summarize(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values, float)
    return {"count": int(a.size), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "total": float(a.sum())}


def compute(train: list[dict], val: list[dict], all_clips: list[dict]) -> dict:
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
        "caption_words": summarize([len(r["text"].split()) for r in rows]),
        "resolutions": dict(collections.Counter(f"{r['width']}x{r['height']}" for r in rows)),
    }


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    series = {
        "duration": [r["duration"] for r in rows],
        "num_frames": [r["num_frames"] for r in rows],
        "caption_length": [len(r["text"].split()) for r in rows],
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
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.scatter([r["width"] for r in rows], [r["height"] for r in rows], s=12, alpha=0.5, color="#dd8452")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "resolution.png"))
    plt.close(fig)
    return paths


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write(stats: dict, path: Path) -> None:
    write_json(path, stats)
