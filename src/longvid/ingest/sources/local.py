"""Local source: video files already on disk, referenced in place (or copied into the raw folder).

Config keys (the dataset's `source` section):

    type: local
    path: data/incoming          a folder, a glob ("/mnt/videos/**/*.mp4") or one file
    recursive: true              walk the sub-folders of a folder `path`
    extensions: [.mp4, .mkv, .webm, .mov, .avi]     matched case-insensitively
    captions: sidecar            sidecar: the text of `<video stem>.txt` beside a video is its caption;
                                 none: no source captions
    copy: false                  true: copy each video into the raw folder as `<id><ext>`
    workers: 4                   threads hashing files

Rows keep the path as matched (a relative `path` stays relative to the working directory, the
repository root in a workflow run), so ids survive moving the repository. Hidden files and folders
(`.x.mp4`, macOS `._x.mp4`, `.cache/`) are skipped. Checksums are remembered (see `checksums`), so
a rerun does not re-read unchanged files. A file that cannot be read becomes an error row; decoding
problems are the probe stage's business.
"""

from __future__ import annotations

import glob
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longvid.ingest import manifest
from longvid.ingest.sources.checksums import ChecksumCache
from longvid.io import InputError, atomic_path

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def find_videos(pattern: str, recursive: bool = True, extensions=VIDEO_EXTENSIONS,
                key: str = "source.path") -> list[Path]:
    """Video files named by a folder, glob or file, sorted; InputError when there are none."""
    exts = {("." + e.lower().lstrip(".")) for e in extensions}
    p = Path(pattern).expanduser()
    if any(c in pattern for c in "*?["):
        matches = [Path(m) for m in glob.glob(str(p), recursive=True)]
    elif p.is_dir():
        walk = p.rglob("*") if recursive else p.iterdir()
        matches = [m for m in walk if not any(part.startswith(".") for part in m.relative_to(p).parts)]
    elif p.is_file():
        matches = [p]
    else:
        raise InputError(f"{key}: no such file or folder: {pattern}")
    videos = sorted({m for m in matches if m.suffix.lower() in exts and not m.name.startswith(".")
                     and m.is_file()}, key=str)
    if not videos:
        raise InputError(f"{key}: no video files ({', '.join(sorted(exts))}) in {pattern}")
    return videos


def sidecar_captions(video: Path) -> list[dict]:
    txt = video.with_suffix(".txt")
    text = txt.read_text(errors="replace").strip() if txt.is_file() else ""
    return [manifest.caption(text)] if text else []


def materialise(item: dict, out_dir: Path, cache: ChecksumCache, copy: bool) -> dict:
    """Manifest row for a file on disk; item = {source, path, captions?, meta?}."""
    src, path = item["source"], Path(item["path"])
    caps, meta = item.get("captions"), item.get("meta")
    try:
        if not path.is_file():
            return manifest.row(src, path, captions=caps, meta=meta, error=f"video not found: {path}")
        if copy:
            dest = out_dir / f"{manifest.video_id(src)}{path.suffix.lower()}"
            # copy2 keeps the mtime, so a copy with the original's size and mtime is up to date
            # (and complete: it only ever appears through the atomic rename)
            st = path.stat()
            current = dest.is_file() and (dest.stat().st_size, dest.stat().st_mtime_ns) == (
                st.st_size, st.st_mtime_ns)
            if not current:
                with atomic_path(dest) as tmp:
                    shutil.copy2(path, tmp)
            path = dest
        return manifest.row(src, path, captions=caps, meta=meta, sha256=cache.sha256(path))
    except OSError as e:
        return manifest.row(src, path, captions=caps, meta=meta, error=_one_line(e))


def materialise_all(items: list[dict], out_dir: Path, copy: bool = False, workers: int = 4) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ChecksumCache(out_dir)
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        return list(pool.map(lambda it: materialise(it, out_dir, cache, copy), items))


def fetch(source: dict, out_dir: Path) -> list[dict]:
    if "path" not in source:
        raise InputError("source.path: required for a local source (a folder, glob or file)")
    mode = source.get("captions", "sidecar")
    if mode not in ("sidecar", "none", None):
        raise InputError(f"source.captions: expected 'sidecar' or 'none', got {mode!r}")
    videos = find_videos(str(source["path"]), bool(source.get("recursive", True)),
                         source.get("extensions", VIDEO_EXTENSIONS))
    items = [{"source": str(v), "path": v, "captions": sidecar_captions(v) if mode == "sidecar" else []}
             for v in videos]
    rows = materialise_all(items, out_dir, bool(source.get("copy", False)), source.get("workers", 4))
    log.info("local: %d videos from %s (%d unreadable)", len(rows), source["path"],
             sum(bool(r["error"]) for r in rows))
    return rows
