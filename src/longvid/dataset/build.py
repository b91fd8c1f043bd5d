"""Gather captioned shards into the training dataset: `train.jsonl`, `val.jsonl`, stats and plots.

Rows follow the research code's JSONL schema — `path` (relative to the dataset directory),
`duration`, `num_frames`, `width`, `height`, `fps`, `caps` (list), `text` — plus the clip span in
its source video (`clip_start`, `clip_end`, seconds), `id`, `video_id`, `source_path` and the filter
scores. Kept clips are hard-linked (copied across file systems) into `clips/`, so the dataset
directory is self-contained and can be versioned with DVC as one unit.

The train/val split is a hash of the clip id and the split seed: deterministic, stable when clips are
added, and independent of shard order.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
from pathlib import Path

from longvid.dataset import stats as dataset_stats
from longvid.io import InputError, link_or_copy, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("frames_at_fps", "short_side", "aspect", "motion")


def split_of(clip_id: str, seed: int, val_fraction: float) -> str:
    h = int(hashlib.sha256(f"{seed}:{clip_id}".encode()).hexdigest()[:12], 16) / 16**12
    return "val" if h < val_fraction else "train"


def dataset_row(clip: dict) -> dict:
    return {
        "path": f"clips/{clip['id']}.mp4",
        "duration": clip["duration"], "num_frames": clip["num_frames"],
        "width": clip["width"], "height": clip["height"], "fps": clip["fps"],
        "caps": clip["caps"], "text": clip["text"],
        "clip_start": clip.get("start"), "clip_end": clip.get("end"),
        "id": clip["id"], "video_id": clip["video_id"], "source_path": clip["source_path"],
        "scores": {k: clip.get(k) for k in SCORE_COLUMNS},
        "meta": clip_meta(clip),
    }


def clip_meta(clip: dict) -> dict:
    """The source's metadata for this clip: of a video's `shots` (ground truth of generated data),
    only the one the clip was cut from."""
    meta = dict(clip.get("meta") or {})
    shots = meta.pop("shots", None)
    if shots and clip.get("end_frame") is not None:
        a, b = clip["start_frame"], clip["end_frame"]
        meta["shot"] = max(shots, key=lambda s: min(b, s["end_frame"]) - max(a, s["start_frame"]))
    return meta


def _counts(counter: collections.Counter, top: int = 3) -> str:
    shown = [f"{k}: {n}" for k, n in counter.most_common(top)]
    return ", ".join(shown + ([f"{len(counter) - top} more"] if len(counter) > top else []))


def _filter_reasons(clips: list[dict]) -> str:
    """Filter reasons by check: "frames 33 < 49: 9" (one value) or "frames 12..40 < 49: 9"."""
    counts: collections.Counter = collections.Counter()
    values: dict[str, list[float]] = collections.defaultdict(list)
    for c in clips:
        for reason in c.get("reject_reasons") or ["no reason recorded"]:
            m = re.fullmatch(r"([a-z ]+?) (-?[\d.]+) (.+)", reason)  # "<check> <clip's value> <bound>"
            key = f"{m[1]} {{}} {m[3]}" if m else reason
            counts[key] += 1
            if m:
                values[key].append(float(m[2]))
    shown: collections.Counter = collections.Counter()
    for key, n in counts.items():
        v = values.get(key)
        span = "" if not v else f"{min(v):g}" if min(v) == max(v) else f"{min(v):g}..{max(v):g}"
        shown[key.replace("{}", span)] = n
    return _counts(shown)


def empty_dataset_reason(clips: list[dict]) -> str:
    """Why none of `clips` (the rows of captioned shard tables) is usable: one line of counts by
    reason, largest first, in the words of the stage that dropped them."""
    if not clips:
        return "0 clips kept: the shards hold no clips (did fetch find any videos?)"
    failed = [c for c in clips if c.get("error")]
    rejected = [c for c in clips if not c.get("error") and not c.get("keep")]
    uncaptioned = [c for c in clips if not c.get("error") and c.get("keep") and not c.get("text")]
    parts = []
    if failed:
        errors = collections.Counter(c["error"] for c in failed)
        parts.append((len(failed), f"{len(failed)} failed in fetch/probe/split ({_counts(errors)})"))
    if rejected:
        parts.append((len(rejected), f"{len(rejected)} rejected by filter ({_filter_reasons(rejected)})"))
    if uncaptioned:
        backends = {c.get("caption_source") for c in uncaptioned}
        why = collections.Counter(c.get("caption_error") or "no caption" for c in uncaptioned)
        hint = (" — caption.backend passthrough needs source captions" if backends == {"passthrough"}
                else f" ({_counts(why)})")
        parts.append((len(uncaptioned), f"{len(uncaptioned)} uncaptioned{hint}"))
    parts.sort(key=lambda p: -p[0])  # stable: ties stay in pipeline order
    return f"0 of {len(clips)} clips kept: " + "; ".join(text for _, text in parts)


def build_dataset(shards: list[Path], out: Path, cfg: dict,
                  max_text_tokens: int = dataset_stats.DEFAULT_MAX_TEXT_TOKENS) -> dict:
    """Gather the captioned shard tables into `out` with the `dataset` section `cfg`; return the stats
    (captions over `max_text_tokens` T5 tokens, the text encoder's limit, are counted)."""
    clips = [c for shard in shards for c in read_jsonl(shard)]
    usable = sorted((c for c in clips if c.get("keep") and c.get("text")), key=lambda c: c["id"])
    if not usable:  # an empty dataset would only fail later, in encode or train, far from the cause
        raise InputError(f"{out}: {empty_dataset_reason(clips)}")
    for clip in usable:
        link_or_copy(Path(clip["path"]), out / "clips" / f"{clip['id']}.mp4")
    rows = [dataset_row(c) for c in usable]
    parts = {"train": [], "val": []}
    for row in rows:
        parts[split_of(row["id"], cfg["seed"], cfg["val_fraction"])].append(row)
    if cfg["val_fraction"] > 0 and not parts["val"] and len(parts["train"]) > 1:
        parts["val"].append(parts["train"].pop())  # a tiny dataset still gets a validation clip
    write_jsonl(out / "train.jsonl", parts["train"])
    write_jsonl(out / "val.jsonl", parts["val"])
    summary = dataset_stats.compute(parts["train"], parts["val"], clips, max_text_tokens)
    dataset_stats.plot(rows, out / "stats", max_text_tokens, clips)
    dataset_stats.write(summary, out / "stats.json")
    return summary


def build_from_shards(cfg: dict, shards_json: Path, out_dir: Path, name: str) -> int:
    """The dataset stage: the captioned tables of every shard `shards_json` lists, into `out_dir`."""
    import json

    try:
        shards = json.loads(Path(shards_json).read_text())["shards"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{shards_json}: unreadable shard list ({type(e).__name__}: {e}); run the shard stage "
                         "first") from None
    tables = [Path(shards_json).parent / s / "captioned.jsonl" for s in shards]
    summary = build_dataset(tables, Path(out_dir), cfg["dataset"], dataset_stats.text_token_limit(cfg))
    log.info("dataset %s: %d train, %d val clips (%.2f h); %d clips rejected", out_dir, summary["clips"]["train"],
             summary["clips"]["val"], summary["hours"], summary["clips"]["rejected"])
    return 0
