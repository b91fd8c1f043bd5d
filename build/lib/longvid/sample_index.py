"""Reading `results/samples/{experiment}/index.json` (written by longvid.sample once every video is
done), for the stages after sampling. Kept apart from longvid.sample so readers such as the report
stage do not import torch."""

from __future__ import annotations

from pathlib import Path

from longvid.io import InputError, json_object


def read_index(samples_dir: Path) -> list[dict]:
    """The sidecars listed by `samples_dir/index.json`; a missing or malformed index is an InputError."""
    path = Path(samples_dir) / "index.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: samples index is missing (run `longvid sample` first)") from None
    samples = json_object(text, str(path)).get("samples")
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "video" in s for s in samples):
        raise InputError(f"{path}: 'samples' must be a list of sidecars, each naming its 'video'")
    return samples
