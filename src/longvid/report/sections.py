"""The page's sections as HTML fragments. Every value from an input passes through `cell`/`esc`."""

from __future__ import annotations

import base64
import statistics
from html import escape as esc
from io import BytesIO
from pathlib import Path
from typing import Any, Iterable

from longvid.report.gather import ReportInputs, finite
from longvid.report.preview import embeddable

VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm"}
# (stats.json key, row label) of the per-clip distributions the dataset builder records.
DISTRIBUTIONS = (("duration", "duration (s)"), ("num_frames", "frames"), ("caption_words", "caption words"),
                 ("caption_t5_tokens", "caption T5 tokens"))
DISTRIBUTION_COLUMNS = ("count", "min", "mean", "p50", "p90", "max")
# Numbers in an evaluated sample that identify it rather than score it.
NOT_METRICS = ("seed", "prompt_index", "sample_index")


def fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "✓" if x else "✗"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def cell(x: Any) -> str:
    return esc(fmt(x))


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image(name: str, png: bytes) -> str:
    return f'<img class="plot" alt="{esc(name)}" title="{esc(name)}" src="{data_uri("image/png", png)}">'


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{cell(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def counts(d: Any) -> str:
    """`{"a": 3, "b": 1}` as "a: 3, b: 1" (resolutions, reject reasons)."""
    if not isinstance(d, dict) or not d:
        return "none"
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1] if finite(kv[1]) else 0))


def dataset_section(inputs: ReportInputs) -> str:
    parts = []
    stats = inputs.dataset_stats
    if stats is None:
        parts.append(note(f"Dataset statistics not available ({where(inputs.dataset_dir, 'stats.json')})."))
    else:
        clips = stats.get("clips") or {}
        parts.append(key_values([
            ("clips scanned", clips.get("scanned")), ("train clips", clips.get("train")),
            ("validation clips", clips.get("val")), ("rejected", clips.get("rejected")),
            ("uncaptioned", clips.get("uncaptioned")), ("hours", stats.get("hours")),
            ("resolutions", counts(stats.get("resolutions"))),
            ("reject reasons", counts(stats.get("reject_reasons"))),
            *caption_lines(stats)]))
        rows = [[label, *(stats[key].get(c) for c in DISTRIBUTION_COLUMNS)]
                for key, label in DISTRIBUTIONS if isinstance(stats.get(key), dict)]
        if rows:
            parts.append(table(["per clip", *DISTRIBUTION_COLUMNS], rows, cls="numbers"))
    if inputs.dataset_plots:
        plots = "".join(image(name, png) for name, png in inputs.dataset_plots)
        parts.append(f'<div class="plots">{plots}</div>')
    else:
        parts.append(note(f"Dataset plots not available ({where(inputs.dataset_dir, 'stats/*.png')})."))
    return "".join(parts)


def caption_lines(stats: dict) -> list[tuple[str, str]]:
    """The caption gates of the dataset stats (stats.json from before them has none: no lines)."""
    lines = []
    tokens = stats.get("caption_tokens")
    if isinstance(tokens, dict) and finite(tokens.get("captions")) and finite(tokens.get("over")):
        over, total = tokens["over"], tokens["captions"]
        share = tokens.get("share_over") if finite(tokens.get("share_over")) else (over / total if total else 0.0)
        how = "exact" if tokens.get("t5_exact") else "estimated"
        lines.append(("captions over the T5 limit", f"{fmt(over)} of {fmt(total)} captions ({share * 100:.3g} %) "
                                                    f"over the {fmt(tokens.get('limit'))}-token limit ({how})"))
    status = stats.get("caption_status")
    if isinstance(status, dict) and status:
        lines.append(("caption status", ", ".join(f"{k}: {v}" for k, v in status.items())))
    return lines


def where(directory: Path | None, name: str) -> str:
    """Why an optional input is absent: the path looked at, or that none was passed."""
    if directory is None:
        return "not given"
    return f"{directory / name if name else directory} not found"


def training_chart(rows: list[dict]) -> bytes:
    """Loss and learning rate against step, as a PNG (no pyplot: its global state is not needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=100, layout="constrained")
    for ax, key, color in zip(fig.subplots(1, 2), ("loss", "lr"), ("#1f5fa8", "#b5651d")):
        points = [(r["step"], r[key]) for r in rows if finite(r.get(key))]
        if points:
            ax.plot(*zip(*points), color=color, linewidth=1.2, marker="." if len(points) < 50 else None)
        low, high = min((v for _, v in points), default=0), max((v for _, v in points), default=0)
        if low > 0 and high > 20 * low:
            ax.set_yscale("log")  # losses falling by decades are unreadable on a linear axis
        ax.set_xlabel("step")
        ax.set_title("training loss" if key == "loss" else "learning rate")
        ax.grid(alpha=0.3)
    buf = BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def median_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if finite(r.get(key))]
    return statistics.median(values) if values else None


def training_section(inputs: ReportInputs) -> str:
    parts = []
    rows = inputs.training
    if not rows:
        parts.append(note(f"Training curve not available ({where(inputs.model_dir, 'metrics.jsonl')})."))
    else:
        losses = [(r["loss"], r["step"]) for r in rows if finite(r.get("loss"))]
        lowest = min(losses) if losses else (None, None)
        parts.append(image("training loss and learning rate", training_chart(rows)))
        parts.append(key_values([
            ("steps logged", len(rows)), ("last step", rows[-1]["step"]), ("last loss", rows[-1].get("loss")),
            ("lowest loss", f"{fmt(lowest[0])} (step {fmt(lowest[1])})"),
            ("median samples/s", median_of(rows, "samples_per_s")),
            ("median tokens/s", median_of(rows, "tokens_per_s"))]))
    cfg = inputs.run_config
    if cfg is None:
        parts.append(note(f"Run configuration not available ({where(inputs.model_dir, 'config.json')})."))
    else:
        model, train = cfg.get("model") or {}, cfg.get("train") or {}
        parts.append(key_values([
            ("dataset", cfg.get("dataset")), ("model size", model.get("size")),
            ("regime", train.get("regime")), ("steps", train.get("steps")),
            ("micro batch", train.get("micro_batch")), ("lr", train.get("lr")),
            ("precision", train.get("precision")),
            *((k.replace("_", " "), v) for k, v in inputs.provenance.items())]))
    return "".join(parts)


def metrics_section(inputs: ReportInputs) -> str:
    ev = inputs.evaluation
    if ev is None:
        return note(f"Evaluation not available ({where(inputs.metrics_path, '')}; run `longvid evaluate`).")
    parts = []
    evaluated = (ev.get("checkpoint") or {}).get("sha256")
    sampled = {(s.get("checkpoint") or {}).get("sha256") for s in inputs.samples} - {None}
    if evaluated and sampled and evaluated not in sampled:
        parts.append(note("Warning: these metrics were computed for another checkpoint than the videos."))
    rows = [[r.get("label") or r.get("metric"), r.get("samples"), r.get("reference"), r.get("better")]
            for r in ev.get("table") or [] if isinstance(r, dict)]
    parts.append(table(["metric", "samples", "reference", "better"], rows, cls="numbers") if rows
                 else note("The evaluation holds no metrics table."))
    tier2 = ev.get("tier2") or {}
    if tier2:
        items = []
        for name, result in tier2.items():
            result = result if isinstance(result, dict) else {"status": result}
            status = result.get("status")
            detail = result.get("value") if "value" in result else result.get("reason")
            detail = f" — {cell(detail)}" if detail is not None else ""
            items.append(f'<li><b>{esc(name)}</b>: '
                         f'<span class="status-{esc(str(status))}">{cell(status)}</span>{detail}</li>')
        parts.append('<h3>Tier 2</h3><ul class="tier2">' + "".join(items) + "</ul>")
    return "".join(parts)


def shapes_check(shapes: Any) -> str:
    """The prompted colour/direction against what the evaluator saw, e.g. "color red → green ✗"."""
    if not isinstance(shapes, dict):
        return ""
    expected = shapes.get("expected") or {}
    checks = []
    for attr in ("color", "direction"):
        if attr in shapes or attr in expected:
            ok = bool(shapes.get(f"{attr}_ok"))
            checks.append(f"{esc(attr)} {cell(expected.get(attr))} → {cell(shapes.get(attr))} "
                          f'<span class="{"ok" if ok else "bad"}">{cell(ok)}</span>')
    return '<p class="shapes">' + " · ".join(checks) + "</p>"


def sample_card(sidecar: dict, scores: dict | None, samples_dir: Path) -> str:
    path = samples_dir / str(sidecar["video"])
    if path.is_file():
        data, is_preview = embeddable(path)
        mime = "video/mp4" if is_preview else VIDEO_TYPES.get(path.suffix.lower(), "video/mp4")
        media = (f'<video controls autoplay loop muted playsinline preload="auto" '
                 f'src="{data_uri(mime, data)}"></video>')
        if is_preview:
            media += f'<p class="meta">preview; full quality: <code>{esc(str(path))}</code></p>'
    else:
        media = note(f"{path} not found")
    h, w = sidecar.get("height"), sidecar.get("width")
    meta = [f"seed {fmt(sidecar.get('seed'))}",
            f"{fmt(sidecar.get('sampler'))}, {fmt(sidecar.get('steps'))} steps, "
            f"cfg {fmt(sidecar.get('cfg'))}",
            f"{fmt(sidecar.get('num_frames'))} frames @ {fmt(sidecar.get('fps'))} fps, {fmt(w)}×{fmt(h)}"]
    if scores is None:
        metrics = note("no per-sample metrics")
    else:
        numbers = ((k.replace("_", " "), v) for k, v in scores.items() if finite(v) and k not in NOT_METRICS)
        metrics = key_values(numbers) + shapes_check(scores.get("shapes"))
    return (f'<figure class="sample">{media}<figcaption><p class="prompt">{cell(sidecar.get("prompt"))}</p>'
            f'<p class="meta">{esc(" · ".join(meta))} · <code>{cell(sidecar["video"])}</code></p>'
            f"{metrics}</figcaption></figure>")


def samples_section(inputs: ReportInputs) -> str:
    if not inputs.samples:
        return note(f"{inputs.samples_dir / 'index.json'} lists no samples.")
    evaluated = (inputs.evaluation or {}).get("samples") or []
    scored = {s.get("video"): s for s in evaluated if isinstance(s, dict)}
    cards = (sample_card(s, scored.get(s["video"]), inputs.samples_dir) for s in inputs.samples)
    return '<div class="samples">' + "".join(cards) + "</div>"
