"""The pipeline's stages, one table: what `longvid <stage>` runs, with what config and which files.

Every stage has the same shape. It belongs to a dataset or an experiment, named by `--dataset NAME`
or `--experiment NAME`; its config is what longvid.config.stage_inputs says the stage reads,
resolved by name from config/ (`--configfile`, merged like Snakemake's) or handed over by the
workflow (`--stage-config FILE`, resolved at parse time with every override). Its files are flags
whose defaults follow the repository layout, so a person runs

    longvid filter --dataset shapes --shard s00000

and gets what the workflow's rule makes (tests/test_workflow.py checks this). The work itself is
`entry`, a function of the stage's library module, called as entry(cfg, **files, **options) and
returning the exit status; it is imported only when the stage runs, so `--help` stays fast. No
stage's module imports another's (tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from longvid import config as lvconfig

SHARD = "data/shards/{dataset}/{shard}"
DATASET = "data/datasets/{dataset}"  # of an experiment stage: the experiment's dataset
# what the model stages hand on: the exported model (train's output), the samples, the metrics
MODEL = ("results/train/{experiment}/final", "exported model: weights, config with step and provenance, curve")
SAMPLES = ("results/samples/{experiment}", "the samples: index.json, videos and sidecars")
METRICS = "results/eval/{experiment}/metrics.json"


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str | None  # "dataset" or "experiment": whose config the stage reads (None: none)
    entry: str  # "module:function"
    summary: str
    files: dict[str, tuple[str | None, str]]  # flag -> (default pattern, or None; help)
    shard: bool = False  # works on one shard: --shard
    options: dict[str, dict] = field(default_factory=dict)  # other flags: argparse keyword arguments

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        if self.kind is not None:
            p.add_argument(f"--{self.kind}", required=True, metavar="NAME", help=f"config/{self.kind}s/NAME.yaml")
            p.add_argument("--configfile", type=Path, nargs="+", metavar="FILE", help="config files whose "
                           "overrides apply, merged in order like Snakemake's (default: config/config.yaml)")
            p.add_argument("--stage-config", type=Path, metavar="FILE",
                           help="the stage's inputs as the workflow resolved them (instead of --configfile)")
        if self.shard:
            p.add_argument("--shard", required=True, help="e.g. s00000")
        for flag, (default, text) in self.files.items():
            p.add_argument(flag, type=Path, help=f"{text} (default: {default})" if default else text)
        for flag, kwargs in self.options.items():
            p.add_argument(flag, **kwargs)

    def config(self, args) -> dict:
        if args.stage_config is not None:
            return lvconfig.read_stage_config(args.stage_config, self.kind, self.name)
        return lvconfig.by_name(self.kind, getattr(args, self.kind), self.name, args.configfile)

    def run(self, args) -> int:
        cfg = self.config(args) if self.kind is not None else {}
        name = getattr(args, self.kind) if self.kind is not None else None
        # what default paths are made of; an experiment's {dataset} is the one it trains on
        dataset = cfg["dataset"] if self.kind == "experiment" else name
        fields = {"shard": getattr(args, "shard", None), "dataset": dataset, "experiment": name}
        kwargs = {}
        for flag, (default, _) in self.files.items():
            value = getattr(args, flag_attr(flag))
            if value is None and default is not None:
                value = Path(default.format(**fields))
            kwargs[flag_attr(flag)] = value
        kwargs |= {flag_attr(flag): getattr(args, flag_attr(flag)) for flag in self.options}
        if name is not None:
            kwargs["name"] = name
        module, function = self.entry.split(":")
        return int(getattr(importlib.import_module(module), function)(cfg, **kwargs) or 0)


def flag_attr(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


WORKERS = {"--workers": {"type": int, "default": os.cpu_count(), "help": "parallel processes (default: all cores)"}}


def per_shard(name: str, entry: str, summary: str, reads: tuple[str, str, str], writes: str, workers: bool = True,
              **files: tuple[str, str]) -> Stage:
    """A data stage that turns one table of a shard into the next: reads = (flag, table, what it is)."""
    flag, table, what = reads
    return Stage(name, "dataset", entry, summary, shard=True, options=WORKERS if workers else {},
                 files={f"--{flag}": (f"{SHARD}/{table}.jsonl", what), "--out": (f"{SHARD}/{writes}.jsonl", "output table"),
                        **{f"--{k.replace('_', '-')}": v for k, v in files.items()}})


STAGES = [
    Stage("fetch", "dataset", "longvid.ingest.fetch:fetch_dataset",
          "fetch a dataset's source videos (synthetic, local, urls, pixabay, annotations) and write its manifest",
          files={"--out-dir": ("data/raw/{dataset}/videos", "where fetched videos go"),
                 "--manifest": ("data/raw/{dataset}/manifest.jsonl", "output manifest")}),
    Stage("shard", "dataset", "longvid.ingest.shard:write_shards",
          "split the manifest into fixed-size shards, the unit of every data job",
          files={"--manifest": ("data/raw/{dataset}/manifest.jsonl", "dataset manifest"),
                 "--out-dir": ("data/shards/{dataset}", "shard manifests go to OUT_DIR/{shard}/"),
                 "--shards-json": ("data/shards/{dataset}/shards.json", "output: the shard list")}),
    per_shard("probe", "longvid.ingest.probe:probe_shard",
              "decode every video of a shard: frames, fps, displayed size, rotation, codec, errors",
              ("manifest", "manifest", "shard manifest"), "probe"),
    per_shard("split", "longvid.ingest.split:split_shard",
              "detect scenes and cut frame-accurate clips (journaled: a killed job resumes)",
              ("probe", "probe", "probed shard table"), "clips",
              clip_dir=("data/clips/{dataset}/{shard}", "where cut clips go")),
    per_shard("filter", "longvid.ingest.filters:filter_shard",
              "score clips (frames at the training fps, size, aspect, motion); keep or reject them with reasons",
              ("clips", "clips", "clip table from split"), "filtered"),
    per_shard("caption", "longvid.caption.stage:caption_shard",
              "caption the kept clips of a shard (source captions, or a VLM behind an OpenAI-compatible API)",
              ("clips", "filtered", "filtered clip table"), "captioned", workers=False,
              cache=("data/caption_cache/{dataset}/{shard}.jsonl", "finished captions, kept across failed and "
                     "repeated jobs (not a Snakemake output)")),
    Stage("dataset", "dataset", "longvid.dataset.build:build_from_shards",
          "gather captioned shards into train/val JSONL, stats, plots and clips/",
          files={"--shards-json": ("data/shards/{dataset}/shards.json", "the shard list (its captioned tables "
                                   "are the input)"),
                 "--out-dir": (DATASET, "the dataset directory")}),
    Stage("publish", None, "longvid.dvc_publish:publish_stage",
          "version a built dataset (or raw data) with DVC and push it to the default remote",
          files={"--path": (None, "directory to version, e.g. data/datasets/shapes")},
          options={"--push": {"action": "store_true", "help": "push when a default DVC remote is configured"}}),
    Stage("encode", "experiment", "longvid.encode:encode_dataset",
          "precompute VAE latents and text embeddings into the content-addressed cache (split over ranks)",
          files={"--dataset-dir": (DATASET, "the experiment's dataset"),
                 "--cache": ("data/latents/cache", "content-addressed store, shared by all experiments"),
                 "--index": ("data/latents/{experiment}/train.jsonl", "output: this split's cache index")},
          options={"--split": {"default": "train", "choices": ["train", "val"]}}),
    Stage("train", "experiment", "longvid.train.loop:train",
          "train the model (CPU or GPUs, DeepSpeed optional); resumes by itself, exits 75 on a stop signal",
          files={"--dataset-dir": (DATASET, "the experiment's dataset"),
                 "--run-dir": ("results/train/{experiment}", "checkpoints, metrics.jsonl, final/"),
                 "--latents": ("data/latents/{experiment}/train.jsonl", "latent index from encode (used when "
                               "data.latent_cache is on)")},
          options={"--attempt": {"type": int, "default": 1, "help": "Snakemake's attempt number: a retry "
                                 "after an scancelled attempt is refused"}}),
    Stage("sample", "experiment", "longvid.sample:sample_all",
          "render videos from the exported model: recorded seeds, sidecars, resumable, split over ranks",
          files={"--model": MODEL, "--prompts": (None, "prompt file (default: the experiment's sample.prompts)"),
                 "--work-dir": ("results/sample_runs/{experiment}", "where videos are made and kept across runs"),
                 "--out-dir": ("results/samples/{experiment}", "receives links to the current set")}),
    Stage("evaluate", "experiment", "longvid.evaluate.evaluation:evaluate_stage",
          "score samples: flicker, motion, warping, prompted colour/direction, val loss; FVD/CLIP/VBench if set",
          files={"--model": MODEL, "--samples": SAMPLES, "--out": (METRICS, "output metrics"),
                 "--dataset-dir": (DATASET, "the held-out clips' dataset (val.jsonl)")}),
    Stage("report", "experiment", "longvid.report.html:write_report",
          "one self-contained HTML page: dataset, training curve, provenance, metrics, sample videos",
          files={"--samples": SAMPLES, "--model": MODEL, "--metrics": (METRICS, "from evaluate"),
                 "--dataset-dir": (DATASET, "stats.json and stats/*.png"),
                 "--out": ("results/report/{experiment}.html", "the page")}),
]
BY_NAME = {s.name: s for s in STAGES}
