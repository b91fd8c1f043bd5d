"""The request side of the fake VLM (vlm_server.py): body validation, media decoding, and the caption
a "model" computes from the pixels. Kept apart from the HTTP server so each file reads on its own."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np


class Reject(Exception):
    def __init__(self, status: int, message: str, kind: str, outcome: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}
        self.outcome = outcome or f"error_{status}"


def bad(message: str) -> Reject:
    return Reject(400, message, "BadRequestError")


def nearest(palette: dict, rgb) -> tuple[str, float]:
    name = min(palette, key=lambda k: np.linalg.norm(np.subtract(palette[k], rgb)))
    return name, float(np.linalg.norm(np.subtract(palette[name], rgb)))


def opening(m: np.ndarray) -> np.ndarray:
    """3x3 morphological opening of (n, h, w) masks: drops the 1-2 px ringing lines H.264 and JPEG
    leave beside sharp edges, keeps a shape's corners."""
    def shifts(x, op):
        p = np.pad(x, ((0, 0), (1, 1), (1, 1)))  # False outside the frame
        out = p[:, 1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out = op(out, p[:, dy:dy + x.shape[1], dx:dx + x.shape[2]])
        return out

    eroded = shifts(m, np.logical_and)
    return shifts(eroded, np.logical_or) & m


def describe(frames: list[np.ndarray]) -> tuple[str, str]:
    """(short, dense) captions of RGB frames. Shapes world: the object is the pixels nearer the
    median non-background colour than the background (the first frame's border); its centroid from
    first to last frame gives the direction, the corners of its bounding box the shape."""
    from longvid.shapes import BACKGROUNDS, COLORS

    frames = [f for f in frames if f.shape == frames[0].shape]
    a = np.stack(frames).astype(np.int16)
    n, h, w = a.shape[:3]
    f0 = a[0]
    bg = np.median(np.concatenate([f0[0], f0[-1], f0[:, 0], f0[:, -1]]), axis=0)
    to_bg = np.abs(a - bg).max(-1)
    rough = to_bg > 60
    if rough.sum() >= 4:
        obj = np.median(a[to_bg >= np.percentile(to_bg[rough], 75)], axis=0)  # the core: JPEG blurs edges
        axis = obj - bg  # a pixel is a mix alpha*obj + (1-alpha)*bg; the object is where alpha > 1/2
        mask = opening(((a - bg) @ axis) / max(float(axis @ axis), 1.0) > 0.5)
        cname, cd = nearest(COLORS, obj)
        bname, bd = nearest(BACKGROUNDS, bg)
        if cd < 60 and bd < 40 and 0.002 < mask.mean() < 0.3:
            cents, tops, bottoms = [], [], []
            for m in mask:
                ys, xs = np.nonzero(m)
                if len(xs):
                    cents.append((xs.mean() / w, ys.mean() / h))
                    t, l, hh, ww = ys.min(), xs.min(), np.ptp(ys) + 1, np.ptp(xs) + 1
                    box = m[t:t + hh, l:l + ww]
                    q, r = max(hh // 4, 1), max(ww // 4, 1)
                    tops.append((box[:q, :r].mean() + box[:q, -r:].mean()) / 2)
                    bottoms.append((box[-q:, :r].mean() + box[-q:, -r:].mean()) / 2)
            # the bounding box's outer corners are full for a square, a third full for a circle, and
            # for the (upward) triangle empty at the top, three quarters full at the bottom
            top, bottom = float(np.median(tops)), float(np.median(bottoms))
            shape = "triangle" if bottom - top > 0.35 else "square" if top + bottom > 1.3 else "circle"
            (x0, y0), (x1, y1) = cents[0], cents[-1]
            dx, dy = x1 - x0, y1 - y0
            if max(abs(dx), abs(dy)) < 0.05:
                short = f"a {cname} {shape} stays still on a {bname} background"
            else:
                way = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
                short = f"a {cname} {shape} moves {way} on a {bname} background"
            dense = (f"{short}, from ({x0:.0%}, {y0:.0%}) to ({x1:.0%}, {y1:.0%}) of the frame, "
                     f"over {n} frames of {w}x{h} pixels")
            return short, dense
    mean = a[:, h // 4: max(3 * h // 4, 1), w // 4: max(3 * w // 4, 1)].reshape(-1, 3).mean(0)
    name, _ = nearest({**BACKGROUNDS, **COLORS}, mean)
    short = f"a video of {n} frames, mostly {name} ({','.join(str(round(c)) for c in mean)})"
    return short, f"{short}, {w}x{h} pixels"


def shorten(text: str) -> str:
    """The fake's text model: the caption after the last "Caption:" cut at its first comma (on the
    shapes world the short caption of a dense one), else the text's first 8 words."""
    head, sep, caption = text.rpartition("Caption:")
    if not sep:
        return " ".join(text.split()[:8])
    return caption.strip().split(",")[0].strip()


def jpeg(b64: str) -> np.ndarray:
    from PIL import Image

    try:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64, validate=True))).convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any undecodable input is the client's 400, as in vLLM
        raise bad(f"Failed to load image: {type(e).__name__}") from None


def mp4(data: bytes, num_frames: int) -> list[np.ndarray]:
    """The server-side sampling of vLLM's VideoMediaIO: num_frames uniformly over the clip."""
    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    except (av.FFmpegError, IndexError) as e:
        raise bad(f"Failed to load video: {type(e).__name__}") from None
    if not frames:
        raise bad("Failed to load video: no frames")
    idx = np.linspace(0, len(frames) - 1, max(1, min(num_frames, len(frames)))).round().astype(int)
    return [frames[i] for i in idx]


def data_url(url: str, server) -> tuple[str, bytes]:
    if url.startswith("file://"):
        root, path = server.allowed_local_media_path, Path(url.removeprefix("file://")).resolve()
        if not root or not path.is_relative_to(Path(root).resolve()):
            raise bad("Cannot load local files without `--allowed-local-media-path`.")
        return "video/mp4", base64.b64encode(path.read_bytes())
    head, sep, payload = url.partition(",")
    if not (url.startswith("data:") and sep and head.endswith(";base64")):
        raise bad(f"Only data: URLs are served here, got {url[:40]!r}")
    mime = head[5:].removesuffix(";base64")
    return mime, payload.encode()


def parse(req: dict, server) -> dict:
    """Validate a chat request like a pydantic server would; decode its media."""
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise bad("messages: a list of objects is required")
    users = [m for m in msgs if m.get("role") == "user"]
    if len(users) != 1 or any(m.get("role") not in ("system", "user", "assistant") for m in msgs):
        raise bad("messages: exactly one user message (and optional system messages) expected")
    content = users[0].get("content")
    texts = [m["content"] for m in msgs if m.get("role") == "system" and isinstance(m.get("content"), str)]
    if isinstance(content, str) or (isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" for p in content)):  # a text-only request
        text = "\n".join(texts + ([content] if isinstance(content, str) else [p.get("text", "") for p in content]))
        return {"mode": "text", "frames": [], "text": text, "meta": {}, "visual": 0,
                "key": hashlib.sha256(text.encode()).hexdigest()[:16]}
    if not isinstance(content, list):
        raise bad("user content: a list of parts with one video or images is required")
    videos, images = [], []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif kind in ("image_url", "video_url") and isinstance(p.get(kind), dict) \
                and isinstance(p[kind].get("url"), str):
            (images if kind == "image_url" else videos).append(data_url(p[kind]["url"], server))
        else:
            raise bad(f"unsupported content part: {json.dumps(p)[:80]}")
    if len(videos) > 1 or (videos and images) or not (videos or images):
        raise bad("At most 1 video(s) may be provided in one prompt (or images without a video).")
    mio = req.get("media_io_kwargs") or {}
    meta = mio.get("video", {}) if isinstance(mio, dict) else None
    if not isinstance(meta, dict):
        raise bad("media_io_kwargs.video must be an object")
    for key, types in (("fps", (int, float)), ("duration", (int, float)), ("total_num_frames", int),
                       ("num_frames", int), ("frames_indices", list)):
        if key in meta and not isinstance(meta[key], types):
            raise bad(f"media_io_kwargs.video.{key}: wrong type")
    if videos and videos[0][0] == "video/jpeg":
        mode, frames = "video_frames", [jpeg(b) for b in videos[0][1].decode().split(",")]
    elif videos:
        try:
            raw = base64.b64decode(videos[0][1], validate=True)
        except ValueError:
            raise bad("Failed to load video: invalid base64") from None
        mode, frames = "video_file", mp4(raw, meta.get("num_frames", 32))
    else:
        if not all(m.startswith("image/") for m, _ in images):
            raise bad("image_url: an image data URL is required")
        mode, frames = "image_list", [jpeg(b.decode()) for _, b in images]
    h, w = frames[0].shape[:2]
    per = math.ceil(h / 28) * math.ceil(w / 28)  # Qwen2.5-VL: one token per 28x28 px (per frame pair in videos)
    visual = per * (len(frames) if mode == "image_list" else math.ceil(len(frames) / 2))
    text = "\n".join(texts)
    key = hashlib.sha256(text.encode() + b"".join(m.encode() + b for m, b in videos + images)).hexdigest()[:16]
    return {"mode": mode, "frames": frames, "text": text, "meta": meta, "visual": visual, "key": key}
