"""Remembered sha256 of files that have not changed since they were hashed.

Fetching a dataset again (new config, or a rerun after a failure) must not re-read terabytes of
videos that were already checksummed. The cache is an append-only JSONL beside the fetched videos
(`<out_dir>/.sha256-cache.jsonl`); an entry counts only while the file keeps its size and mtime.
A torn last line (a killed run) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from longvid.io import sha256_file
from longvid.io import dumps_row


class ChecksumCache:
    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / ".sha256-cache.jsonl"
        self.entries: dict[str, tuple[int, int, str]] = {}
        self.lock = threading.Lock()
        if self.path.exists():
            with open(self.path) as f:
                for line in f:
                    try:
                        e = json.loads(line)
                        self.entries[e["path"]] = (e["bytes"], e["mtime_ns"], e["sha256"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    @staticmethod
    def _key(path: str | os.PathLike) -> str:
        return str(Path(path).resolve())

    def get(self, path: str | os.PathLike) -> str | None:
        """The remembered checksum, or None when unknown or the file changed since."""
        st = os.stat(path)
        hit = self.entries.get(self._key(path))
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        return None

    def put(self, path: str | os.PathLike, sha256: str) -> None:
        st = os.stat(path)
        key = self._key(path)
        entry = {"path": key, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        with self.lock:
            self.entries[key] = (st.st_size, st.st_mtime_ns, sha256)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(dumps_row(entry) + "\n")

    def sha256(self, path: str | os.PathLike) -> str:
        """Checksum of `path`, hashed only when not remembered."""
        known = self.get(path)
        if known is None:
            known = sha256_file(path)
            self.put(path, known)
        return known
