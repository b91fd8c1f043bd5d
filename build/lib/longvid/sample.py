"""Render videos from an exported model: every prompt of a prompt file, `samples_per_prompt` times.

Replaces the seed's `sample_video_oci.py` (seed-analysis §7) with what it lacked:

* Each video's noise comes from its own seed, derived from (sample.seed, prompt index, sample index),
  so a video is reproducible on its own, whichever rank or run makes it and whatever else is sampled
  (the seed drew from one global stream per rank: a video depended on its neighbours).
* Files are named by position, `{prompt:04d}_{sample:02d}.mp4`, with a JSON sidecar holding everything
  that determines the video (prompt, seeds, sampler, guidance, geometry, the checkpoint's step and
  weight hash, the I2V image's hash). A rerun skips a video whose mp4 and sidecar exist with the same
  settings and regenerates it otherwise; files are written to a temporary name and renamed, so a killed
  run never leaves half a video. `index.json` lists every sample once all ranks are done.
* Items are split over ranks (item k on rank k % W) and each rank takes its own GPU.

Prompt file: one prompt per line; blank lines are skipped with a warning. For I2V models (model.size
5b-i2v) each line is `prompt@@path`, the path (relative to the prompt file's directory unless
absolute) naming an image or a video whose first frame conditions the sample; that frame is resized to
cover the output size and center-cropped, VAE-encoded and padded with zero latents to the video's
length, for both the conditional and the unconditional branch (as the seed did).

The unconditional branch of classifier-free guidance uses the negative prompt's embedding when
`sample.negative_prompt` is set, else zeros: the "dropped" text of training.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longvid.io import InputError, atomic_path, link_or_copy, sha256_file, write_json
from longvid.models.export import model_identity
from longvid.video import encode_frames, first_frame, to_uint8

log = logging.getLogger(__name__)
I2V_SIZES = ("5b-i2v",)
SEP = "@@"


@dataclass(frozen=True)
class Prompt:
    index: int  # among the file's prompts: names the outputs and feeds the seed
    text: str
    where: str  # "file:line", for messages and the sidecar
    condition: Path | None = None  # I2V image or video


def read_prompts(path: str | Path, i2v: bool) -> list[Prompt]:
    """The prompts of `path`; every problem names the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: prompt file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable prompt file ({e})") from None
    prompts = []
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            log.warning("%s: empty line skipped", where)
            continue
        text, sep, cond = line.partition(SEP)
        text, cond = text.strip(), cond.strip()
        if not text:
            raise InputError(f"{where}: empty prompt before '{SEP}'")
        condition = None
        if sep:
            if not i2v:
                raise InputError(f"{where}: '{SEP}' gives an I2V image, but the model is not an I2V model "
                                 f"(model.size must be one of {', '.join(I2V_SIZES)})")
            if not cond:
                raise InputError(f"{where}: nothing after '{SEP}' (expected an image or video path)")
            condition = Path(cond) if Path(cond).is_absolute() else path.parent / cond
            if not condition.is_file():
                raise InputError(f"{where}: I2V image {condition} does not exist")
        elif i2v:
            raise InputError(f"{where}: an I2V model needs 'prompt{SEP}image_or_video' on every line")
        prompts.append(Prompt(len(prompts), text, where, condition))
    if not prompts:
        raise InputError(f"{path}: no prompts (every line is empty)")
    return prompts


def sample_seed(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """A seed per video, independent of every other video's (SeedSequence spawn keys); 63 bits so it
    fits torch.manual_seed and a signed 64-bit reader of the sidecar."""
    if base_seed < 0:
        raise InputError(f"sample.seed={base_seed}: must be >= 0")
    ss = np.random.SeedSequence(entropy=base_seed, spawn_key=(prompt_index, sample_index))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def shard(num_items: int, rank: int, world_size: int) -> list[int]:
    """The items rank `rank` of `world_size` makes: k with k % world_size == rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return list(range(rank, num_items, world_size))


def sample_settings(exp: dict) -> dict:
    """What the experiment contributes to every video's settings, validated."""
    from longvid.config import VAE_GEOMETRY
    from longvid.models.vae import causal_latent_frames

    s, d = exp["sample"], exp["data"]
    frames = s["num_frames"] or d["num_frames"]
    # checked before any model loads, with the VAE type's compression (VideoSampler asks the VAE itself)
    causal_latent_frames(frames, VAE_GEOMETRY[exp["model"]["vae"]["type"]][0], "sample.num_frames")
    if d["height"] % 2 or d["width"] % 2:
        raise InputError(f"data.height/width={d['height']}x{d['width']}: must be even to write H.264")
    return {"negative_prompt": s["negative_prompt"], "base_seed": s["seed"], "sampler": s["sampler"],
            "steps": s["steps"], "cfg": s["cfg"], "dynamic_cfg": s["dynamic_cfg"], "num_frames": frames,
            "fps": d["fps"], "height": d["height"], "width": d["width"], "model_size": exp["model"]["size"],
            "precision": exp["train"]["precision"]}


def item_settings(common: dict, prompt: Prompt, j: int, checkpoint: dict, cond_sha: str | None) -> dict:
    return {**common, "prompt": prompt.text, "prompt_index": prompt.index, "sample_index": j,
            "seed": sample_seed(common["base_seed"], prompt.index, j), "checkpoint": checkpoint,
            "condition": None if prompt.condition is None else {"path": str(prompt.condition), "sha256": cond_sha}}


def comparable(sidecar: dict) -> dict:
    """The part of a sidecar that decides the pixels: paths and timings are left out."""
    out = {k: v for k, v in sidecar.items() if k not in ("source", "video", "seconds")}
    if out.get("checkpoint"):
        out["checkpoint"] = {k: v for k, v in out["checkpoint"].items() if k != "path"}
    if out.get("condition"):
        out["condition"] = {"sha256": out["condition"].get("sha256")}
    return out


def is_done(stem: Path, settings: dict) -> bool:
    mp4, side = stem.with_suffix(".mp4"), stem.with_suffix(".json")
    if not (mp4.is_file() and side.is_file()):
        return False
    try:
        return comparable(json.loads(side.read_text())) == comparable(settings)
    except (OSError, ValueError):
        return False  # a damaged sidecar: regenerate


class VideoSampler:
    """The model, its encoders and the guidance of one experiment, on one device."""

    def __init__(self, exp: dict, model_dir: Path, device: torch.device):
        from longvid.diffusion.samplers import Guidance
        from longvid.runtime import Geometry, Pipeline

        self.exp, self.device, self.s = exp, device, sample_settings(exp)
        pipe = Pipeline.load(model_dir, exp, device)
        self.model, self.meta, self.enc, self.schedule = pipe.model, pipe.meta, pipe.encoders, pipe.schedule
        self.guidance = Guidance(scale=float(self.s["cfg"]), dynamic=self.s["dynamic_cfg"])
        neg = self.s["negative_prompt"]
        self.uncond = self.enc.text([neg]) if neg.strip() else None  # None: the sampler's zeros
        geometry = Geometry.of(self.enc.vae, self.model.config)
        self.latent_shape = (1, geometry.latent_frames(self.s["num_frames"], "sample.num_frames"),
                             self.enc.vae.latent_channels,
                             *geometry.latent_size(self.s["height"], self.s["width"], "data.height/width"))
        self._check_geometry()

    def _check_geometry(self) -> None:
        from longvid.models.config import check_frames

        cfg = self.model.config
        try:
            check_frames(cfg, self.latent_shape[1])
        except InputError as e:
            raise InputError(f"sample.num_frames={self.s['num_frames']}: {e}") from None
        image_channels = self.latent_shape[2] if self.s["model_size"] in I2V_SIZES else 0
        if cfg.in_channels != self.latent_shape[2] + image_channels:
            raise InputError(f"model.vae: makes {self.latent_shape[2]}-channel latents but the model takes "
                             f"{cfg.in_channels} input channels (is the experiment the one it was trained with?)")

    def condition_latent(self, condition: Path, where: str, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
        """The I2V input: the first frame's latent, then zeros, (1, T, C, h, w)."""
        frame = first_frame(condition, self.s["height"], self.s["width"], where)
        video = torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
        z = self.enc.vae.encode(video, generator=generator).permute(0, 2, 1, 3, 4)  # (1, 1, C, h, w)
        padded = torch.zeros(self.latent_shape, device=self.device, dtype=z.dtype)
        padded[:, :1] = z
        return padded

    @torch.no_grad()
    def generate(self, prompt: Prompt, seed: int) -> tuple[torch.Tensor, np.ndarray]:
        """(latents (1, T, C, h, w), uint8 frames (F, H, W, 3)) for one video."""
        from longvid.diffusion.samplers import sample

        generator = torch.Generator("cpu").manual_seed(seed)  # noise drawn on CPU: same on any device
        noise = torch.randn(self.latent_shape, generator=generator).to(self.device)
        image = None if prompt.condition is None else self.condition_latent(prompt.condition, prompt.where, generator)
        context = self.enc.text([prompt.text])

        def model_fn(x, t, ctx):
            img = None if image is None else image.expand(x.shape[0], -1, -1, -1, -1)
            return self.model(x, t, ctx, image_latent=img)

        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s["precision"] == "bf16")
        with autocast:
            latents = sample(model_fn, noise, self.schedule, context, num_steps=self.s["steps"],
                             sampler=self.s["sampler"], guidance=self.guidance, uncond=self.uncond,
                             generator=generator)
        video = self.enc.vae.decode(latents.permute(0, 2, 1, 3, 4))  # (1, 3, F, H, W)
        return latents, to_uint8(video[0].permute(1, 0, 2, 3).float().cpu())


def write_video(stem: Path, frames: np.ndarray, fps: float, sidecar: dict) -> None:
    """Old sidecar out, then the mp4, then the new sidecar, each atomic: wherever a run is killed, a
    sidecar only ever sits beside the complete video it describes."""
    stem.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(stem.with_suffix(".mp4")) as tmp:
        encode_frames(tmp, frames, fps)
    write_json(stem.with_suffix(".json"), sidecar)


Item = tuple[Prompt, int, dict]  # (prompt, sample index, sidecar without timing)


def plan(exp: dict, model_dir: Path, prompts_path: Path) -> list[Item]:
    """Every video of the run with its settings, validated before anything is generated."""
    common = sample_settings(exp)
    prompts = read_prompts(prompts_path, i2v=exp["model"]["size"] in I2V_SIZES)
    checkpoint = {**model_identity(model_dir), "path": str(model_dir)}
    cond_sha = {}
    for p in prompts:
        if p.condition is not None and p.condition not in cond_sha:
            first_frame(p.condition, common["height"], common["width"], p.where)  # unreadable: fail now
            cond_sha[p.condition] = sha256_file(p.condition)
    return [(p, j, {**item_settings(common, p, j, checkpoint, cond_sha.get(p.condition)), "source": p.where,
                    "video": f"{p.index:04d}_{j:02d}.mp4"})
            for p in prompts for j in range(exp["sample"]["samples_per_prompt"])]


def sample_shard(items: list[Item], exp: dict, model_dir: Path, out_dir: Path, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu") -> list[Path]:
    """Make this rank's videos that are missing or stale; return the mp4s written."""
    mine = shard(len(items), rank, world_size)
    todo = [k for k in mine if not is_done(Path(out_dir) / Path(items[k][2]["video"]).stem, items[k][2])]
    log.info("rank %d/%d: %d of its %d videos to make (%d in all)", rank, world_size, len(todo), len(mine),
             len(items))
    if not todo:
        return []  # nothing stale: the model is not even loaded
    sampler = VideoSampler(exp, Path(model_dir), torch.device(device))
    written = []
    for k in todo:
        prompt, _, settings = items[k]
        t0 = time.perf_counter()
        _, frames = sampler.generate(prompt, settings["seed"])
        stem = Path(out_dir) / Path(settings["video"]).stem
        write_video(stem, frames, settings["fps"], {**settings, "seconds": round(time.perf_counter() - t0, 3)})
        log.info("%s: %s (seed %d)", stem.with_suffix(".mp4"), prompt.where, settings["seed"])
        written.append(stem.with_suffix(".mp4"))
    return written


def write_index(items: list[Item], out_dir: Path) -> Path:
    """`index.json`: every video's sidecar, in item order; fails if any video is missing or stale."""
    rows = []
    for _, _, settings in items:
        stem = Path(out_dir) / Path(settings["video"]).stem
        if not is_done(stem, settings):
            raise RuntimeError(f"{stem.with_suffix('.mp4')}: missing or made with other settings after "
                               "every rank finished")
        rows.append(json.loads(stem.with_suffix(".json").read_text()))
    path = Path(out_dir) / "index.json"
    write_json(path, {"count": len(rows), "samples": rows})
    return path


def publish(items: list[Item], work_dir: Path, out_dir: Path) -> Path:
    """Link (or copy, across filesystems) the listed videos, sidecars and index of `work_dir` into
    `out_dir`. The workflow's output is that directory, which Snakemake empties before every run;
    the videos themselves stay in the work directory, so a rerun or a requeued job skips them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [Path(settings["video"]).stem + suffix for _, _, settings in items for suffix in (".mp4", ".json")]
    for name in [*names, "index.json"]:
        link_or_copy(work_dir / name, out_dir / name)
    return out_dir / "index.json"


def sample_all(exp: dict, model: Path, prompts: Path | None, work_dir: Path, out_dir: Path, name: str) -> int:
    """The sample stage: this rank's share of every video (made in `work_dir`); rank 0 then writes
    the index and links the current set into `out_dir`. `prompts` defaults to sample.prompts."""
    from longvid.dist import barrier, cleanup, init_distributed

    model_dir = Path(model)
    items = plan(exp, model_dir, Path(prompts or exp["sample"]["prompts"]))  # bad input fails before the ranks join
    info = init_distributed()
    sample_shard(items, exp, model_dir, work_dir, info.rank, info.world_size, info.device)
    barrier()
    if info.is_main:
        index = write_index(items, work_dir)
        if Path(work_dir) != Path(out_dir):
            index = publish(items, Path(work_dir), Path(out_dir))
        log.info("%s: wrote %s", name, index)
    cleanup()
    return 0
