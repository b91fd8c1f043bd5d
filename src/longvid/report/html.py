"""Write one self-contained HTML page per experiment: dataset, training curves, metrics, sample videos.

The page references nothing outside itself (no CDN, fonts or remote scripts): plots are PNG data URIs
and videos are base64 `data:video/mp4` URIs, so the one file can be archived, mailed or attached to an
issue and still open years later. It weighs 4/3 of the sample videos (base64) plus the plots;
videos over 1.5 MB go in as smaller previews (longvid.report.preview).

Inputs: the samples index (index.json and the videos; required) and, each optional — the page shows
a "not available" note when one is missing — the dataset's stats.json and stats/*.png, the exported
model's config.json (the experiment it was trained with, its step and provenance) and metrics.jsonl
(the training curve), and the evaluate stage's metrics.json. All text from inputs (prompts above
all) is escaped.

A small inline script marks each video `data-loaded="1"` (and `data-video-width`) once the browser
has decoded its first frame, shows a note under a video it cannot decode, and marks each decoded
image `data-ok="1"`; the tests read these marks back from a headless Chromium.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from html import escape as esc

from longvid.io import write_text
from longvid.report.gather import ReportInputs, gather
from longvid.report.sections import dataset_section, fmt, metrics_section, samples_section, training_section

log = logging.getLogger(__name__)

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330;
       background: #f5f6f8; }
header { background: #1d2b45; color: #fff; padding: 1.2em 2em; }
header h1 { margin: 0 0 .2em; font-size: 1.6em; }
header p { margin: .2em 0; opacity: .9; }
main { padding: 0 2em 3em; max-width: 1200px; }
section { background: #fff; border-radius: 8px; padding: .6em 1.4em 1.2em; margin-top: 1.4em;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { font-size: 1.25em; border-bottom: 1px solid #e3e6ea; padding-bottom: .3em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { padding: .25em .8em; border-bottom: 1px solid #eceef1; text-align: left; vertical-align: top; }
table.numbers td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
#metrics table.numbers td:last-child { text-align: left; }
table.kv th { font-weight: 500; color: #556; }
.note { color: #8a5a00; background: #fff6e0; padding: .4em .8em; border-radius: 4px; }
.plots { display: flex; flex-wrap: wrap; gap: .8em; }
img.plot { max-width: 100%; border: 1px solid #e3e6ea; border-radius: 4px; }
.plots img.plot { max-width: 48%; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 1.2em; }
figure.sample { margin: 0; border: 1px solid #e3e6ea; border-radius: 6px; padding: .8em; }
figure.sample video { width: 100%; aspect-ratio: 1; object-fit: contain; background: #000;
                      image-rendering: pixelated; border-radius: 4px; }
.prompt { font-weight: 600; margin: .5em 0 .2em; }
.meta { color: #667; font-size: .88em; margin: 0; }
.ok, .status-ok { color: #18794e; font-weight: 600; }
.bad, .status-failed, .status-error { color: #c0362c; font-weight: 600; }
.status-skipped { color: #8a5a00; }
code { font-size: .9em; }
"""

# Marks what the browser really decoded (read back by the headless-Chromium test) and tells a reader
# whose browser cannot play a video why it stays black. Listeners are attached after parsing, so
# media already decoded by then is caught through readyState / complete.
SCRIPT = """
for (const v of document.querySelectorAll("video")) {
  const loaded = () => { v.dataset.loaded = "1"; v.dataset.videoWidth = v.videoWidth; };
  const failed = () => {
    v.dataset.error = v.error ? String(v.error.code) : "?";
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = "This browser cannot decode this video (H.264 in MP4).";
    v.after(p);
  };
  if (v.readyState >= 2) loaded(); else v.addEventListener("loadeddata", loaded);
  if (v.error) failed(); else v.addEventListener("error", failed);
}
for (const img of document.querySelectorAll("img")) {
  const ok = () => { if (img.naturalWidth > 0) img.dataset.ok = "1"; };
  if (img.complete) ok(); else img.addEventListener("load", ok);
}
"""


def header(inputs: ReportInputs, generated: datetime.datetime) -> str:
    checkpoint = next((s["checkpoint"] for s in inputs.samples if isinstance(s.get("checkpoint"), dict)),
                      (inputs.evaluation or {}).get("checkpoint") or {})
    sha = str(checkpoint.get("sha256") or "")
    facts = [f"checkpoint step {fmt(checkpoint.get('step'))}" + (f" (weights {sha[:12]})" if sha else ""),
             f"dataset {fmt(inputs.experiment.get('dataset'))}",
             f"{len(inputs.samples)} samples",
             f"generated {generated.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    description = str(inputs.experiment.get("description") or "").strip()
    return (f"<header><h1>Experiment {esc(inputs.name)}</h1>"
            + (f"<p>{esc(description)}</p>" if description else "")
            + f"<p>{esc(' · '.join(facts))}</p></header>")


def render_page(inputs: ReportInputs, generated: datetime.datetime | None = None) -> str:
    generated = generated or datetime.datetime.now(datetime.timezone.utc)
    sections = [("dataset", "Dataset", dataset_section(inputs)),
                ("training", "Training", training_section(inputs)),
                ("metrics", "Metrics", metrics_section(inputs)),
                ("samples", "Samples", samples_section(inputs))]
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{content}</section>'
                   for sid, title, content in sections)
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>longvid report: {esc(inputs.name)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body>{header(inputs, generated)}<main>{body}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")


def write_report(cfg: dict, samples: Path, model: Path, dataset_dir: Path, metrics: Path, out: Path,
                 name: str) -> int:
    """The report stage: gather the inputs (all but the samples optional) and write the page to `out`."""
    inputs = gather(name, cfg, Path(samples), dataset_dir=Path(dataset_dir), model_dir=Path(model),
                    metrics=Path(metrics))
    page = render_page(inputs)
    write_text(out, page)
    log.info("wrote %s (%.2f MB, %d videos)", out, len(page.encode()) / 1e6, len(inputs.samples))
    return 0
