"""Tier-2 metrics: they need pretrained weights, read from local paths only (clusters' compute nodes
are often offline, and a silent download would change what the number means). Each returns a dict
with "status": "ok" and its value, or "skipped" with the reason - never a crash that loses tier 1.

* FVD (Unterthiner et al.) between the generated videos and the validation clips, on `windows` windows
  of `length` frames (every `stride`-th frame) spread evenly over each video: one 16-frame window per
  video, as FVD is usually reported, says nothing about minute two of a long clip. The extractor is a
  TorchScript module (the I3D that StyleGAN-V ships is the usual one). With fewer videos than feature
  dimensions the covariances are rank-deficient: the value is still defined but only comparable
  between runs with the same counts, which the result records.
* CLIPScore: cosine similarity x 100 between the prompt (truncated to CLIP's 77 tokens: keep prompts
  short) and each of `frames` evenly spaced frames, averaged over frames, then over videos.
* VBench dimensions that accept custom prompts, through the `vbench` package if installed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def window_starts(num_frames: int, windows: int, span: int) -> list[int]:
    """Up to `windows` distinct starts, evenly spread, of a `span`-frame window in the video."""
    last = num_frames - span
    if last < 0:
        return []
    return sorted({round(x) for x in np.linspace(0, last, windows)})


def windows_of(frames: np.ndarray, cfg: dict) -> list[np.ndarray]:
    span = (cfg["length"] - 1) * cfg["stride"] + 1
    return [frames[s:s + span:cfg["stride"]] for s in window_starts(len(frames), cfg["windows"], span)]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D).
    tr(sqrt(S_a S_b)) is computed as the trace of the symmetric sqrt(S_a) S_b sqrt(S_a)'s square root,
    which stays real and stable where a general matrix square root does not."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


@torch.no_grad()
def features(extractor, clips: list[np.ndarray], kwargs: dict, device: torch.device) -> np.ndarray:
    out = []
    for clip in clips:  # one at a time: 145-frame batches of I3D inputs do not fit everywhere
        x = torch.from_numpy(clip).to(device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        out.append(extractor(x, **kwargs).reshape(1, -1).double().cpu().numpy())
    return np.concatenate(out)


def fvd(cfg: dict | None, samples: list[np.ndarray], reference: list[np.ndarray], device: torch.device) -> dict:
    if cfg is None:
        return skipped("evaluate.fvd not configured (needs extractor_path)")
    path = Path(cfg["extractor_path"])
    if not path.is_file():
        return skipped(f"evaluate.fvd.extractor_path: {path} does not exist")
    fake = [w for v in samples for w in windows_of(v, cfg)]
    real = [w for v in reference for w in windows_of(v, cfg)]
    if len(fake) < 2 or len(real) < 2:
        return skipped(f"fewer than 2 windows of {cfg['length']}x{cfg['stride']} frames "
                       f"(samples: {len(fake)}, reference: {len(real)}); videos too short")
    try:
        extractor = torch.jit.load(str(path), map_location=device).eval()
        a = features(extractor, fake, cfg["extractor_kwargs"], device)
        b = features(extractor, real, cfg["extractor_kwargs"], device)
    except Exception as e:  # noqa: BLE001 - any extractor failure leaves the other metrics standing
        return skipped(f"evaluate.fvd.extractor_path: {path}: {type(e).__name__}: {e}")
    return {"status": "ok", "value": frechet_distance(a, b), "windows": cfg["windows"], "length": cfg["length"],
            "stride": cfg["stride"], "extractor": str(path), "sample_windows": len(fake),
            "reference_windows": len(real), "feature_dim": int(a.shape[1])}


@torch.no_grad()
def clip_score(cfg: dict | None, samples: list[np.ndarray], prompts: list[str], device: torch.device,
               reference: tuple[list[np.ndarray], list[str]] | None = None) -> dict:
    """Samples against their prompts; with `reference` (videos, captions), those too, as
    "reference": what real clips score, with the model loaded once."""
    if cfg is None:
        return skipped("evaluate.clip not configured (needs model_path)")
    path = Path(cfg["model_path"])
    if not path.is_dir():
        return skipped(f"evaluate.clip.model_path: {path} is not a directory")
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        return skipped(f"evaluate.clip.model_path: {path}: {type(e).__name__}: {e}")

    def score(frames: np.ndarray, prompt: str) -> float:
        picks = frames[np.linspace(0, len(frames) - 1, min(cfg["frames"], len(frames))).round().astype(int)]
        inputs = processor(text=[prompt], images=list(picks), return_tensors="pt", padding=True, truncation=True,
                           max_length=model.config.text_config.max_position_embeddings)
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return float((image @ text.T).clamp(min=0).mean() * 100)

    per_video = [score(v, p) for v, p in zip(samples, prompts)]
    result = {"status": "ok", "value": float(np.mean(per_video)), "per_sample": per_video, "frames": cfg["frames"],
              "model": str(path)}
    if reference and reference[0]:
        result["reference"] = float(np.mean([score(v, p) for v, p in zip(*reference)]))
    return result


def vbench(cfg: dict | None, videos: list[Path], prompts: list[str], device: torch.device) -> dict:
    if cfg is None:
        return skipped("evaluate.vbench not configured (needs dimensions and weights_dir)")
    if not Path(cfg["weights_dir"]).is_dir():
        return skipped(f"evaluate.vbench.weights_dir: {cfg['weights_dir']} is not a directory")
    os.environ["VBENCH_CACHE_DIR"] = str(Path(cfg["weights_dir"]).resolve())  # read when vbench imports
    try:
        import vbench as vbench_pkg
        from vbench import VBench
    except ImportError as e:
        return skipped(f"the `vbench` package is not installed ({e}); pip install vbench")
    info = Path(vbench_pkg.__file__).parent / "VBench_full_info.json"
    with tempfile.TemporaryDirectory() as out:
        try:
            bench = VBench(str(device), str(info), out)
            bench.evaluate(videos_path=[str(v) for v in videos], name="longvid", mode="custom_input",
                           dimension_list=cfg["dimensions"], prompt_list=dict(zip(map(str, videos), prompts)))
            results = json.loads((Path(out) / "longvid_eval_results.json").read_text())
        except Exception as e:  # noqa: BLE001
            return skipped(f"vbench failed: {type(e).__name__}: {e}")
    return {"status": "ok", "dimensions": {d: float(r[0]) for d, r in results.items()}}
