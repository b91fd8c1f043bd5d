"""The shared runtime of the model stages: build what an experiment encodes, trains, samples and
evaluates with (VAE, text encoder, DiT, noise schedule), and load an exported model with them.

encode, train, sample, evaluate and the benches all start here; no stage builds these itself.
The DiT's geometry follows from the data and the encoders, so an experiment names only the size and
the long-video variant: num_frames from `data.num_frames`, the latent size from `data.height/width`
and the VAE's compression, channels from the VAE, text width/length from the text encoder.
`Geometry.of(vae, dit_config)` hands those numbers to whatever counts latent frames or tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from longvid.config import VAE_GEOMETRY
from longvid.diffusion.schedule import NoiseSchedule
from longvid.io import InputError
from longvid.models.config import DiTConfig
from longvid.models.registry import DIFFUSION_DEFAULTS, make_config
from longvid.models.text import T5TextEncoder, TextEncoder, TinyTextEncoder
from longvid.models.vae import CogVideoXVAE, PoolVAE, SpaceToDepthVAE, VideoAutoencoder, causal_latent_frames

log = logging.getLogger(__name__)


def latent_size(spatial: int, height: int, width: int, key: str) -> tuple[int, int]:
    if height % spatial or width % spatial:
        raise InputError(f"{key}={height}x{width}: must be multiples of the VAE's {spatial}x")
    return height // spatial, width // spatial


@dataclass(frozen=True)
class Geometry:
    """Pixels -> latents -> DiT tokens: the VAE's compression (temporal, spatial) and the DiT's patch.
    Read from the built objects (`of`), so budgets, padding and tokens/s follow another VAE or patch
    size; the bucket planner, the loader and the trainer are given one instead of assuming 4, 8, 2."""

    temporal: int
    spatial: int
    patch: int

    @classmethod
    def of(cls, vae: VideoAutoencoder, dit_cfg: DiTConfig) -> Geometry:
        t = vae.temporal_compression
        if dit_cfg.time_compressed_rate != t:  # the DiT would count latent frames differently
            raise InputError(f"model.time_compressed_rate={dit_cfg.time_compressed_rate}: the VAE "
                             f"({type(vae).__name__}) groups {t} frames per latent frame")
        return cls(t, vae.spatial_compression, dit_cfg.patch_size)

    @classmethod
    def of_vae(cls, vae: VideoAutoencoder) -> Geometry:
        """The VAE's side alone, for a stage given no DiT (encode): frames and latent sizes are
        right; patch 1, so tokens count latent pixels and must not size batches."""
        return cls(vae.temporal_compression, vae.spatial_compression, 1)

    def latent_frames(self, frames: int, key: str = "num_frames") -> int:
        return causal_latent_frames(frames, self.temporal, key)

    def latent_size(self, height: int, width: int, key: str = "height/width") -> tuple[int, int]:
        return latent_size(self.spatial, height, width, key)

    def latent_tokens(self, latent_frames: int, latent_height: int, latent_width: int) -> int:
        """Video tokens the DiT makes of a latent (text tokens excluded)."""
        return latent_frames * (latent_height // self.patch) * (latent_width // self.patch)

    def tokens(self, frames: int, height: int, width: int) -> int:
        """Video tokens of a frames x height x width clip."""
        return self.latent_tokens(self.latent_frames(frames), *self.latent_size(height, width))


@dataclass
class Encoders:
    vae: VideoAutoencoder
    text: TextEncoder

    @property
    def identity(self) -> str:
        """Names the encoders, for the content-addressed latent cache."""
        return f"{self.vae.encoder_id}|{self.text.encoder_id}"

    def to(self, device) -> "Encoders":
        self.vae.to(device)
        self.text.to(device)
        return self


def build_encoders(exp: dict) -> Encoders:
    m = exp["model"]
    v, t = m["vae"], m["text"]
    if v["type"] == "space_to_depth":
        temporal, spatial, _ = VAE_GEOMETRY["space_to_depth"]  # the table config validation reads too
        vae = SpaceToDepthVAE(temporal=temporal, spatial=spatial)
    elif v["type"] == "pool":
        temporal, spatial, _ = VAE_GEOMETRY["pool"]
        vae = PoolVAE(temporal=temporal, spatial=spatial)
    else:
        if not v["path"]:
            raise InputError("model.vae.path: required for vae.type=cogvideox")
        vae = CogVideoXVAE.from_pretrained(v["path"], scale_factor=v["scale_factor"],
                                           encoder_window=v["encoder_window"], decoder_window=v["decoder_window"])
    if t["type"] == "tiny":
        text = TinyTextEncoder(dim=t["dim"], max_length=t["max_length"], seed=t["seed"], tokenizer=t["tokenizer"])
    else:
        if not t["path"]:
            raise InputError("model.text.path: required for text.type=t5")
        text = T5TextEncoder(t["path"], max_length=t["max_length"])
    return Encoders(vae.eval().requires_grad_(False), text.eval().requires_grad_(False))


def dit_config(exp: dict, enc: Encoders) -> DiTConfig:
    d = exp["data"]
    h, w = latent_size(enc.vae.spatial_compression, d["height"], d["width"], "data.height/width")
    derived = {
        "num_frames": d["num_frames"], "latent_height": h, "latent_width": w,
        "in_channels": enc.vae.latent_channels * (2 if exp["model"]["size"] == "5b-i2v" else 1),
        "out_channels": enc.vae.latent_channels, "text_dim": enc.text.dim, "text_length": enc.text.max_length,
        "gradient_checkpointing": exp["train"]["gradient_checkpointing"],
    }
    return make_config(exp["model"]["size"], **{**exp["model"]["overrides"], **derived})


def build_dit(exp: dict, enc: Encoders, seed: int | None = None):
    """The DiT, with `model.init` weights loaded over its init when the experiment names them."""
    from longvid.models.checkpoint_io import import_weights, summary
    from longvid.models.dit import DiT

    if seed is not None:
        torch.manual_seed(seed)  # identical initial weights on every rank
    model = DiT(dit_config(exp, enc))
    init = exp["model"].get("init")
    if init:
        result = import_weights(model, init["format"], init["path"])
        log.info("model.init: %s weights from %s; %s", init["format"], init["path"], summary(result))
    return model


def build_schedule(exp: dict) -> NoiseSchedule:
    shift = exp["train"]["snr_shift_scale"]
    if shift is None:
        shift = DIFFUSION_DEFAULTS[exp["model"]["size"]]["snr_shift_scale"]
    return NoiseSchedule.cogvideox(snr_shift_scale=shift)


@dataclass
class Pipeline:
    """An exported model with the encoders and schedule of its experiment, on one device: what
    sampling and evaluation run."""

    model: torch.nn.Module
    encoders: Encoders
    schedule: NoiseSchedule
    meta: dict  # the export's config.json
    device: torch.device

    @classmethod
    def load(cls, model_dir, exp: dict, device) -> "Pipeline":
        from longvid.models.export import load_model

        device = torch.device(device)
        model, meta = load_model(model_dir, device=device)
        if meta.get("experiment", {}).get("model") != exp["model"]:
            log.warning("%s was trained with another model section than the experiment given "
                        "(encoders, size or variant differ)", model_dir)
        return cls(model, build_encoders(exp).to(device), build_schedule(exp), meta, device)
