"""File conventions shared by every stage.

* Outputs are written to a temporary name in the same directory and renamed, so a killed job never
  leaves a complete-looking output (Snakemake would otherwise treat it as done).
* Tables are JSONL: one row per line, readable with `jq`, appendable, diffable.
* `RowJournal` makes per-row work resumable: rows are appended (and flushed) as they finish, a rerun
  skips the ids already journaled, and the final table is published atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


# Every stage's log lines: an ISO timestamp with zone first, so `longvid runtime-report` can read
# the attempts of a training run back.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%dT%H:%M:%S%z"


class InputError(ValueError):
    """Bad user input. The message is one line naming the file/key and the problem."""


def one_line(e: BaseException) -> str:
    """An exception as one log/table line: its type and message, whitespace collapsed."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link `src` to `dst` (replacing it), or copy across file systems."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def dumps_row(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=str)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(dumps_row(row) + "\n")
            n += 1
    return n


def json_object(text: str, where: str, kind: type = dict):
    """`text` parsed as a JSON object (or, with kind=list, a JSON list); anything else is an
    InputError naming `where` (file[:line])."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, kind):
        raise InputError(f"{where}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                         f"got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a JSONL table; a malformed line raises InputError naming file and line."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield json_object(line, f"{path}:{lineno}")


class RowJournal:
    """Append-only progress log beside an output table, keyed by a row id.

    A job killed mid-shard leaves `.<name>.journal`; the rerun reads it back (a torn last line is
    dropped), skips those ids and appends the rest. `publish()` writes the final table in the
    caller's order and removes the journal, so rows are neither lost nor duplicated.
    """

    def __init__(self, output: str | os.PathLike, key: str = "id", fingerprint: str = ""):
        self.output = Path(output)
        self.key = key
        self.path = self.output.with_name(f".{self.output.name}.journal")
        self.rows: dict[str, dict] = {}
        header = dumps_row({"journal_fingerprint": fingerprint}) + "\n"
        if self.path.exists():
            self._recover(header)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")
        if self.path.stat().st_size == 0:
            self._f.write(header)
            self._f.flush()

    def _recover(self, header: str) -> None:
        """Load finished rows; a journal written under other settings (fingerprint) is discarded."""
        with open(self.path, "rb") as f:
            if f.readline() != header.encode():
                os.truncate(self.path, 0)
                return
            good = len(header.encode())
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn write from a kill: the row is redone
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.rows[row[self.key]] = row
                good += len(line)
        os.truncate(self.path, good)

    def __contains__(self, row_id: str) -> bool:
        return row_id in self.rows

    def append(self, row: dict) -> None:
        self.rows[row[self.key]] = row
        self._f.write(dumps_row(row) + "\n")
        self._f.flush()

    def publish(self, order: Iterable[str] | None = None,
                explode: Callable[[dict], Iterable[dict]] | None = None) -> int:
        """Write the output table (rows in `order`, else insertion order) and drop the journal.

        `explode` turns one journaled row into several output rows (e.g. a video into its clips).
        """
        self._f.close()
        ids = list(order) if order is not None else list(self.rows)
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise RuntimeError(f"{self.output}: {len(missing)} rows were never produced (first: {missing[0]})")
        rows = (self.rows[i] for i in ids)
        if explode is not None:
            rows = (out for row in rows for out in explode(row))
        n = write_jsonl(self.output, rows)
        self.path.unlink(missing_ok=True)
        return n

    def close(self) -> None:
        self._f.close()
