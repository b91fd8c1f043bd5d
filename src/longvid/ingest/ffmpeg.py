"""Thin wrappers around the ffmpeg binary (subprocess with an argument list: no shell, so file names
with spaces, quotes or `$(...)` are passed through untouched)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np


def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg not found on PATH; install it (apt-get install ffmpeg) or run `make setup`")
    return exe


def run(args: list[str]) -> None:
    """Run ffmpeg; raise RuntimeError with the last line of its stderr on failure."""
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"ffmpeg failed: {last}")


def encode_frames(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 RGB frames (T, H, W, 3) to an H.264 mp4 (even sizes required by yuv420p)."""
    t, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "pipe:",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", str(path)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg encode of {path} failed: {proc.stderr.decode().strip()[-300:]}")
