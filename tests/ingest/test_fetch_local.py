"""`local` source: folders and globs of files on disk, referenced in place or copied, with sidecar
captions and remembered checksums."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from longvid.ingest import manifest
from longvid.ingest.fetch import fetch
from longvid.io import InputError


def blob(seed: int, n: int = 50_000) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub/deeper").mkdir(parents=True)
    files = {"b.mp4": blob(1), "a.MOV": blob(2), "sub/c.webm": blob(3), "sub/deeper/d.mkv": blob(4)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "b.txt").write_text("  a red circle moves left \n")
    (d / "sub/c.txt").write_text("\n")  # an empty sidecar is no caption
    (d / "notes.pdf").write_bytes(b"%PDF")
    (d / "._b.mp4").write_bytes(b"AppleDouble junk")  # hidden: skipped
    (d / ".cache").mkdir()
    (d / ".cache/e.mp4").write_bytes(blob(5))  # in a hidden folder: skipped
    (d / "dir.mp4").mkdir()  # a folder with a video's name is not a video
    return d, files


def test_folder_is_walked_and_referenced_in_place(tmp_path, folder):
    d, files = folder
    out = tmp_path / "out"
    rows = fetch({"type": "local", "path": str(d)}, out)
    names = [os.path.relpath(r["path"], d) for r in rows]
    assert names == ["a.MOV", "b.mp4", "sub/c.webm", "sub/deeper/d.mkv"]  # sorted, extensions any case
    for name, r in zip(names, rows):
        assert r["source"] == r["path"] == str(d / name)  # in place: no copy
        assert r["id"] == manifest.video_id(str(d / name))
        assert (r["bytes"], r["sha256"], r["error"]) == (len(files[name]), sha(files[name]), "")
    caps = {n: [c["text"] for c in r["captions"]] for n, r in zip(names, rows)}
    assert caps == {"a.MOV": [], "b.mp4": ["a red circle moves left"], "sub/c.webm": [], "sub/deeper/d.mkv": []}
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]  # nothing copied

    top = fetch({"type": "local", "path": str(d), "recursive": False, "captions": "none"}, out)
    assert [os.path.basename(r["path"]) for r in top] == ["a.MOV", "b.mp4"]
    assert all(r["captions"] == [] for r in top)


def test_globs_and_extension_filter(tmp_path, folder):
    d, _ = folder
    rows = fetch({"type": "local", "path": str(d / "**/*.mkv")}, tmp_path / "out")
    assert [os.path.relpath(r["path"], d) for r in rows] == ["sub/deeper/d.mkv"]
    rows = fetch({"type": "local", "path": str(d), "extensions": ["webm", ".MKV"]}, tmp_path / "out")
    assert [os.path.basename(r["path"]) for r in rows] == ["c.webm", "d.mkv"]
    one = fetch({"type": "local", "path": str(d / "b.mp4")}, tmp_path / "out")
    assert len(one) == 1 and one[0]["captions"][0]["text"] == "a red circle moves left"


def test_copy_mode_copies_once_and_checksums_follow_changes(tmp_path, folder):
    d, files = folder
    out = tmp_path / "out"
    src = {"type": "local", "path": str(d), "copy": True}
    rows = fetch(src, out)
    for r in rows:
        assert r["path"] == str(out / f"{r['id']}{os.path.splitext(r['source'])[1].lower()}")
        assert Path(r["path"]).read_bytes() == Path(r["source"]).read_bytes()
    copied = {r["path"]: os.stat(r["path"]).st_ino for r in rows}  # a new copy is a new inode
    cache_lines = (out / ".sha256-cache.jsonl").read_text().splitlines()

    again = fetch(src, out)
    assert again == rows
    assert {p: os.stat(p).st_ino for p in copied} == copied  # not copied again
    assert (out / ".sha256-cache.jsonl").read_text().splitlines() == cache_lines  # nor re-hashed

    # Same size, new content: the copy and its checksum are redone, not taken from the cache.
    changed = blob(99, len(files["b.mp4"]))
    (d / "b.mp4").write_bytes(changed)
    after = {os.path.basename(r["source"]): r for r in fetch(src, out)}
    assert after["b.mp4"]["sha256"] == sha(changed)
    assert Path(after["b.mp4"]["path"]).read_bytes() == changed
    assert after["a.MOV"]["sha256"] == sha(files["a.MOV"])
    assert all(json.loads(line)["sha256"] for line in (out / ".sha256-cache.jsonl").read_text().splitlines())


def test_bad_config_names_the_key(tmp_path, folder):
    d, _ = folder
    with pytest.raises(InputError, match=r"source\.path: no such file or folder"):
        fetch({"type": "local", "path": str(tmp_path / "missing")}, tmp_path / "out")
    with pytest.raises(InputError, match=r"source\.path: no video files"):
        fetch({"type": "local", "path": str(d), "extensions": [".flv"]}, tmp_path / "out")
    with pytest.raises(InputError, match=r"source\.path: required"):
        fetch({"type": "local"}, tmp_path / "out")
    with pytest.raises(InputError, match=r"source\.captions"):
        fetch({"type": "local", "path": str(d), "captions": "yes please"}, tmp_path / "out")


@pytest.mark.timeout(60)  # glob.glob's `**` took exponential time on these two loops
@pytest.mark.parametrize("pattern", ["in", "in/**/*.mp4"])
def test_symlink_loops_and_dangling_links_are_error_rows(tmp_path, pattern):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.mp4").write_bytes(blob(1))
    (d / "sub/b.mp4").write_bytes(blob(2))
    (d / "sub/up").symlink_to("..")  # back to in/
    (d / "sub/again").symlink_to("../sub")  # back to itself
    (d / "loop.mp4").symlink_to("loop.mp4")
    (d / "gone.mp4").symlink_to("nowhere.mp4")
    (d / "notes").symlink_to("nowhere")  # not named like a video: none of our business
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "c.mp4").write_bytes(blob(3))
    (d / "linked").symlink_to(outside)  # a symlinked folder is followed
    (d / "sub/real").symlink_to("../linked")  # ... once, however many links lead there
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative path stays relative in the rows
    try:
        rows = {r["source"]: r for r in fetch({"type": "local", "path": pattern}, tmp_path / "out")}
    finally:
        os.chdir(cwd)
    assert rows.keys() == {"in/a.mp4", "in/sub/b.mp4", "in/linked/c.mp4", "in/loop.mp4", "in/gone.mp4",
                           "in/sub/up", "in/sub/again"}
    assert [rows[s]["sha256"] for s in ("in/a.mp4", "in/sub/b.mp4", "in/linked/c.mp4")] == [
        sha(blob(1)), sha(blob(2)), sha(blob(3))]
    errors = {s: r["error"] for s, r in rows.items() if r["error"]}
    assert errors == {
        "in/loop.mp4": "in/loop.mp4 -> loop.mp4: symlink loop",
        "in/gone.mp4": "in/gone.mp4 -> nowhere.mp4: dangling symlink",
        "in/sub/up": f"in/sub/up -> ..: symlink loop (leads back to {d})",
        "in/sub/again": f"in/sub/again -> ../sub: symlink loop (leads back to {d / 'sub'})",
    }


def _drop_read_override() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so the
    program it execs, though root, obeys permission bits like any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_files_and_folders_are_error_rows(tmp_path):
    """Root reads whatever the permission bits say, so as root the fetch runs in a child without
    the capabilities that allow that: the reads really fail, as they do for any other user."""
    import subprocess
    import sys

    d = tmp_path / "in"
    (d / "locked").mkdir(parents=True)
    for name, data in {"ok.mp4": blob(1), "secret.mp4": blob(2), "cap.mp4": blob(3), "locked/x.mp4": blob(4)}.items():
        (d / name).write_bytes(data)
    (d / "cap.txt").write_text("a caption")
    for p in ("secret.mp4", "cap.txt", "locked"):
        (d / p).chmod(0)
    code = ("import json, sys; from longvid.ingest.fetch import fetch; "
            "print(json.dumps(fetch({'type': 'local', 'path': sys.argv[1]}, sys.argv[2])))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(d), str(tmp_path / "out")], check=False,
                              capture_output=True, text=True, preexec_fn=_drop_read_override if os.geteuid() == 0 else None)
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot drop the capabilities that let root read anything: {e}")
    finally:
        for p in ("secret.mp4", "cap.txt", "locked"):
            (d / p).chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    errors = {os.path.relpath(r["source"], d): r["error"] for r in json.loads(proc.stdout)}
    assert errors == {
        "ok.mp4": "",
        "secret.mp4": f"PermissionError: [Errno 13] Permission denied: '{d / 'secret.mp4'}'",
        "cap.mp4": f"{d / 'cap.txt'}: unreadable caption sidecar: PermissionError: [Errno 13] "
                   f"Permission denied: '{d / 'cap.txt'}'",
        "locked": f"cannot list folder {d / 'locked'}: PermissionError: Permission denied",
    }
