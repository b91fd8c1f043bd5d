"""Sample videos small enough to embed in the page.

A 145-frame 720x480 sample at the sample stage's quality is several megabytes, and the page carries
every video base64-encoded (4/3 of its size): a few dozen of them make a report browsers and mail
servers choke on. A video over PREVIEW_BYTES is therefore embedded as a preview - re-encoded at most
PREVIEW_WIDTH wide at a lower quality - and the page names the full-quality file beside it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ffmpeg

from longvid.video import h264, run_ffmpeg

PREVIEW_BYTES = 1_500_000
PREVIEW_WIDTH = 480


def embeddable(path: Path, max_bytes: int = PREVIEW_BYTES, max_width: int = PREVIEW_WIDTH) -> tuple[bytes, bool]:
    """(bytes to embed, whether they are a preview rather than the file itself)."""
    data = path.read_bytes()
    if len(data) <= max_bytes:
        return data, False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preview.mp4"
        # even width and height, as yuv420p needs; never upscaled
        scaled = ffmpeg.input(str(path)).video.filter("scale", f"min({max_width},iw)", -2)
        run_ffmpeg(h264(scaled, out, crf=30))
        preview = out.read_bytes()
    return (preview, True) if len(preview) < len(data) else (data, False)
