"""The caption stage's entry: dispatch on caption.backend.

    caption_shard(cfg, clips, out, name, cache=None) -> int

`passthrough` keeps the source captions (longvid.caption.passthrough); `openai` asks a VLM
(longvid.caption.openai_backend); `transformers` runs one in this process
(longvid.caption.transformers_backend). `cache` (not passthrough) is the per-shard caption cache, which must
not be a declared Snakemake output: the stage table passes data/caption_cache/{dataset}/{shard}.jsonl;
None puts it beside `out` as a hidden file.
"""

from __future__ import annotations

from pathlib import Path

from longvid.io import InputError


def caption_shard(cfg: dict, clips: Path, out: Path, name: str, cache: Path | None = None) -> int:
    backend = cfg["caption"]["backend"]
    if backend == "passthrough":
        from longvid.caption.passthrough import caption_shard as passthrough

        return passthrough(cfg, clips, out, name)
    if backend == "openai":
        from longvid.caption.openai_backend import caption_shard as openai

        return openai(cfg, clips, out, name, cache=cache)
    if backend == "transformers":
        from longvid.caption.transformers_backend import caption_shard as local

        return local(cfg, clips, out, name, cache=cache)
    raise InputError(f"caption.backend: {backend!r} is not implemented")
