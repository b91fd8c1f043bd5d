"""Local source: video files already on disk, referenced in place (or copied into the raw folder).

Config keys (the dataset's `source` section; defaults live in longvid/schemas/dataset.schema.yaml):

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
a rerun does not re-read unchanged files. Symlinked folders are followed, each real folder once;
a symlink loop, a dangling link, a folder that cannot be listed and a file (or caption) that cannot
be read each become an error row naming the path; decoding problems are the probe stage's business.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longvid import config as lvconfig
from longvid.ingest import manifest
from longvid.ingest.sources.checksums import ChecksumCache
from longvid.io import InputError, atomic_path

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _match(parts: tuple, pats: tuple, prefix: bool = False) -> bool:
    """Whether path parts match glob parts (`**` spans any number of folders); with `prefix`,
    whether a match may lie below the folder `parts`."""
    if not parts:
        return bool(pats) if prefix else all(q == "**" for q in pats)
    if not pats:
        return False
    if pats[0] == "**":
        return _match(parts, pats[1:], prefix) or _match(parts[1:], pats, prefix)
    return fnmatch.fnmatchcase(parts[0], pats[0]) and _match(parts[1:], pats[1:], prefix)


def _problem(path: Path, e: OSError | None = None) -> str:
    """One line naming `path` and why it cannot be read (`e`, else found by stat-ing it)."""
    if e is None:
        try:
            path.stat()
            return f"{path}: not a regular file"
        except OSError as err:
            e = err
    target = f" -> {os.readlink(path)}" if path.is_symlink() else ""
    what = ("dangling symlink" if isinstance(e, FileNotFoundError) and target else
            "symlink loop" if e.errno == errno.ELOOP else f"{type(e).__name__}: {e.strerror or e}")
    return f"{path}{target}: {what}"


def walk(top: Path, wanted, problems: list) -> list[Path]:
    """Files under `top` whose parts relative to it satisfy `wanted(parts, is_dir)`; hidden names
    are skipped. Symlinked folders are followed, each real folder once: one that leads back to a
    folder it lies in is a loop (glob's `**` follows those until the path is too long, exponentially
    often), reported like a folder that cannot be listed or an entry that cannot be examined:
    appended to `problems` as (path, message), never raised and never silently dropped."""
    # Linked folders wait until the real ones are walked, so a video reached both ways keeps its
    # real path (its id).
    files, walked, stack, links = [], set(), [(top, ())], []
    while stack or links:
        d, rel = stack.pop() if stack else links.pop(0)
        real = os.path.realpath(d)
        if real in walked:
            if rel and Path(os.path.realpath(d.parent)).is_relative_to(real):
                target = f" -> {os.readlink(d)}" if d.is_symlink() else ""
                problems.append((d, f"{d}{target}: symlink loop (leads back to {real})"))
            continue  # else reached twice through links: listed once
        walked.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise InputError(f"source.path: cannot list {d}: {_one_line(e)}") from None
            problems.append((d, f"cannot list folder {_problem(d, e)}"))
            continue
        for e in entries:
            path, parts = d / e.name, (*rel, e.name)
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if wanted(parts, True):
                        (links if e.is_symlink() else stack).append((path, parts))
                elif wanted(parts, False):
                    if e.is_file():
                        files.append(path)
                    else:  # a dangling link or a fifo named like a video: say so, do not read it
                        problems.append((path, _problem(path)))
            except OSError as err:  # a link loop, or an entry of a folder that may not be searched
                if wanted(parts, False) or wanted(parts, True):
                    problems.append((path, _problem(path, err)))
    return files


def find_videos(pattern: str, recursive: bool, extensions: list[str],
                key: str = "source.path") -> tuple[list[Path], list[tuple[Path, str]]]:
    """Video files named by a folder, glob or file, sorted, and (path, problem) for each entry that
    could not be examined; InputError when there are neither."""
    exts = {("." + e.lower().lstrip(".")) for e in extensions}
    p = Path(pattern).expanduser()
    problems: list[tuple[Path, str]] = []

    def is_video(parts) -> bool:
        return Path(parts[-1]).suffix.lower() in exts

    if any(c in pattern for c in "*?["):
        # walked here rather than by glob.glob, which hangs on symlink loops under `**`
        i = next(i for i, part in enumerate(p.parts) if any(c in part for c in "*?["))
        base, pats = Path(*p.parts[:i]) if i else Path("."), p.parts[i:]
        matches = walk(base, lambda parts, is_dir: _match(parts, pats, is_dir) and (is_dir or is_video(parts)),
                       problems) if base.is_dir() else []
    elif p.is_dir():
        matches = walk(p, lambda parts, is_dir: recursive if is_dir else is_video(parts), problems)
    elif p.is_file():
        matches = [p] if p.suffix.lower() in exts else []
    else:
        raise InputError(f"{key}: no such file or folder: {pattern}")
    videos = sorted(set(matches), key=str)
    if not videos and not problems:
        raise InputError(f"{key}: no video files ({', '.join(sorted(exts))}) in {pattern}")
    return videos, sorted(problems, key=lambda pr: str(pr[0]))


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
    source = lvconfig.source(source)
    videos, failed = find_videos(source["path"], source["recursive"], source["extensions"])
    items = []
    for v in videos:
        try:
            items.append({"source": str(v), "path": v,
                          "captions": sidecar_captions(v) if source["captions"] == "sidecar" else []})
        except OSError as e:
            failed.append((v, f"{v.with_suffix('.txt')}: unreadable caption sidecar: {_one_line(e)}"))
    rows = materialise_all(items, out_dir, source["copy"], source["workers"])
    rows = sorted(rows + [manifest.row(str(p), p, error=msg) for p, msg in failed], key=lambda r: r["source"])
    log.info("local: %d videos from %s (%d unreadable)", len(rows), source["path"],
             sum(bool(r["error"]) for r in rows))
    return rows
