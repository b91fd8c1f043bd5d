"""Precompute VAE latents and text embeddings of an experiment's dataset into the content-addressed
cache (data/latents/cache, shared by every experiment computing the same thing), and write the
experiment's index of them (data/latents/{experiment}/train.jsonl). Split over the job's ranks."""

from __future__ import annotations

from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config


def add_arguments(p) -> None:
    add_config_arguments(p, "experiment", "encode")
    p.add_argument("--dataset-dir", type=Path, help="default: data/datasets/{the experiment's dataset}")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--cache", type=Path, help=f"content-addressed store (default: {layout.LATENT_CACHE})")
    p.add_argument("--index", type=Path, help="output: index of this split's entries (default: "
                   "data/latents/{experiment}/train.jsonl)")


def run(args) -> int:
    from longvid.encode import encode_split

    exp = stage_config(args, "experiment", "encode")
    dataset_dir = path_or(args.dataset_dir, layout.dataset_dir(exp["dataset"]))
    index = path_or(args.index, layout.latent_index(args.experiment))
    if args.split != "train" and args.index is None:
        index = index.with_name(f"{args.split}.jsonl")
    encode_split(exp, dataset_dir / f"{args.split}.jsonl", dataset_dir, path_or(args.cache, layout.LATENT_CACHE),
                 index)
    return 0
