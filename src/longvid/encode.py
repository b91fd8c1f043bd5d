"""Precompute VAE latents and text embeddings of a dataset into a content-addressed cache.

A cache entry is keyed by what determines it — the clip's content (sha256 of the file), the caption,
the encoders' identity, frames x height x width at the training fps, the dtype and the decoding
version (longvid.video.DECODE_VERSION) — never by file name, so entries are shared by every experiment that would compute the same thing, and a changed
clip, caption or encoder can never be served stale. Entries are `{cache}/{key[:2]}/{key}.safetensors`
holding `latents` (T, C, h, w) and `context` (L, D), written atomically; existing ones are skipped.

The index (`--index`, JSONL: id, key, file) lists the entries of one dataset split for one experiment;
the trainer reads it instead of decoding video. Rows are divided across the processes of the job
(rank r encodes rows r, r+W, ...), and rank 0 writes the index once all are done.

Cached clips use one fixed window per clip (the first `num_frames` at the training fps); training on
the fly instead samples a random window each epoch. With `data.buckets`, each clip is encoded at its
bucket's size and the index records the bucket, which the trainer batches by.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from longvid.dataset.loader import VideoClipDataset
from longvid.dist import barrier, cleanup, init_distributed
from longvid.io import atomic_path, sha256_file, write_jsonl
from longvid.runtime import Geometry, build_encoders
from longvid.video import DECODE_VERSION

log = logging.getLogger(__name__)
DTYPE = "float32"


def entry_key(clip_sha: str, text: str, encoder_id: str, shape: str) -> str:
    parts = [clip_sha, hashlib.sha256(text.encode()).hexdigest(), encoder_id, shape, DTYPE,
             f"decode{DECODE_VERSION}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def entry_path(cache: Path, key: str) -> Path:
    return cache / key[:2] / f"{key}.safetensors"


def bucket_assignment(d: dict, ds: VideoClipDataset, geometry: Geometry) -> list[int | None]:
    """Each row's bucket under `data.buckets` (sizes set on `ds`), or 0 for all without buckets."""
    if not d.get("buckets"):
        return [0] * len(ds.rows)
    from longvid.dataset.buckets import assign_buckets

    assignment = assign_buckets(ds.rows, d["buckets"], geometry, fps=d["fps"])
    ds.set_sizes([None if b is None else tuple(d["buckets"][b]) for b in assignment])
    return assignment


@torch.no_grad()
def encode_split(exp: dict, jsonl: Path, root: Path, cache: Path, index: Path) -> int:
    info = init_distributed()
    d = exp["data"]
    enc = build_encoders(exp)
    enc.vae.to(info.device)
    enc.text.to(info.device)
    # encode is given no DiT section: the VAE's geometry places clips in buckets; the trainer sizes
    # the batches of the recorded buckets with the DiT's patch
    geometry = Geometry.of_vae(enc.vae)
    ds = VideoClipDataset(jsonl, root=root, num_frames=d["num_frames"], fps=d["fps"], height=d["height"],
                          width=d["width"], text_key=d["text_key"], random_start=False,
                          temporal_compression=geometry.temporal, decoder=d["decoder"])
    assignment = bucket_assignment(d, ds, geometry)
    # dataset rows with a bucket (all of them without buckets: a short clip is padded as in training)
    used = [i for i, bucket in enumerate(assignment) if bucket is not None]
    rows, done = [], 0
    for i in used:
        frames, height, width = ds.shape_of(i)
        caption = json.dumps(ds.rows[i][d["text_key"]], sort_keys=True)  # a string, or a list of captions
        key = entry_key(sha256_file(ds.paths[i]), caption, enc.identity, f"{frames}x{height}x{width}@{d['fps']}fps")
        rows.append({"id": ds.rows[i].get("id", str(i)), "key": key,
                     "file": os.path.relpath(entry_path(cache, key), index.parent),
                     **({"bucket": assignment[i]} if d.get("buckets") else {})})
    mine = [k for k in range(len(rows)) if k % info.world_size == info.rank]
    for k in tqdm(mine, desc="encode", unit="clip", disable=None if info.is_main else True):
        path = entry_path(cache, rows[k]["key"])
        if path.exists():
            continue
        item = ds[used[k]]
        video = item["video"].to(info.device).permute(1, 0, 2, 3)[None]  # (1, 3, F, H, W)
        latents = enc.vae.encode(video)[0].permute(1, 0, 2, 3)  # (T, C, h, w)
        context = enc.text([item["text"]])[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"latents": latents.float().cpu().contiguous(), "context": context.float().cpu().contiguous()},
                      str(tmp))
        done += 1
    barrier()
    if info.is_main:
        write_jsonl(index, rows)
    log.info("encoded %d new clips of %d (%s)", done, len(rows), enc.identity)
    cleanup()
    return done


def encode_dataset(cfg: dict, dataset_dir: Path, cache: Path, index: Path, split: str, name: str) -> int:
    """The encode stage: the experiment's `split` of its dataset into the cache, indexed in `index`."""
    encode_split(cfg, Path(dataset_dir) / f"{split}.jsonl", Path(dataset_dir), Path(cache), Path(index))
    return 0
