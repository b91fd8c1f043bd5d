"""Video autoencoders: video (B, 3, F, H, W) in [-1, 1] <-> latents (B, C', F', H', W').

Both follow CogVideoX's causal layout: the first frame is encoded alone, every later group of 4 frames
becomes one latent frame, so F' = (F - 1) / 4 + 1 (49 -> 13, 145 -> 37), and space shrinks 8x.

* `CogVideoXVAE`: the real causal 3D VAE (seed-analysis §4) through diffusers' AutoencoderKLCogVideoX,
  loaded from a local path, latents multiplied by the scale factor after encoding and divided before
  decoding. Temporal tiling = diffusers' frame batching with a causal conv cache: the encoder takes
  `encoder_window` frames at a time (first chunk window + 1), the decoder `decoder_window` latent
  frames, as the seed's encoder/decoder_temporal_tiling_window did (16 and 2 for 145-frame 5B).
  GroupNorm statistics are per chunk, so the window changes the numbers slightly, as in the seed.
  The chunks are the seed's whenever the window divides F - 1 (145 frames with 16, 49 with 8 or 16);
  otherwise diffusers puts the remainder into the first chunk.
* `SpaceToDepthVAE`: for the tiny CPU model. No weights, exactly invertible: pixels are rearranged,
  never mixed. The first frame is repeated 4 times to fill latent frame 0 (decoding averages the
  copies); so every 4N+1-frame video (all 8N+1 clips included) round-trips bit for bit. The price is
  width: 3 * 4 * 8 * 8 = 768 latent channels.
* `PoolVAE`: for the tiny demo. Lossy and weightless: a latent pixel is the mean of its 4 frames x
  8 x 8 pixels (the first frame alone), decoding interpolates back (linear in time, bilinear in
  space). 3 latent channels, 12 values per 2x2 patch: a DiT 64 wide can see, and so remove, all of a
  token's noise. Through the 768-channel space-to-depth latents it only sees a 64-dimensional slice,
  and the noise outside that slice survives sampling: the tiny model's samples stayed pure noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from longvid.io import InputError


def causal_latent_frames(frames: int, temporal: int, key: str) -> int:
    """Latent frames of `frames` pixel frames in the causal layout: the first frame alone, then
    `temporal` frames per latent frame, so `frames` must be tN+1. The one place this rule is written
    (the VAEs, runtime.Geometry and the sample settings call it); `key` names the value."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % temporal:
        raise InputError(f"{key}={frames!r}: must be {temporal}N+1 ({temporal + 1}, {4 * temporal + 1}, "
                         f"{12 * temporal + 1}, ...): the VAE encodes the first frame alone, then "
                         f"{temporal} per latent frame")
    return (frames - 1) // temporal + 1


class VideoAutoencoder(nn.Module):
    latent_channels: int
    temporal_compression: int = 4
    spatial_compression: int = 8

    @property
    def encoder_id(self) -> str:
        """Names what produced a latent, for content-addressed caches."""
        raise NotImplementedError

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        B, _, F, H, W = video_shape
        s = self.spatial_compression
        return B, self.latent_channels, self._check_video(F, H, W), H // s, W // s

    def _check_video(self, F: int, H: int, W: int) -> int:
        """The latent frames of a valid video; InputError otherwise."""
        s = self.spatial_compression
        frames = causal_latent_frames(F, self.temporal_compression, f"{type(self).__name__} input frames")
        if H % s or W % s:
            raise InputError(f"video: {H}x{W} pixels; {type(self).__name__} needs height and width "
                             f"divisible by {s}")
        return frames


class SpaceToDepthVAE(VideoAutoencoder):
    def __init__(self, channels: int = 3, temporal: int = 4, spatial: int = 8, scale_factor: float = 1.0):
        super().__init__()
        self.channels, self.temporal_compression, self.spatial_compression = channels, temporal, spatial
        self.latent_channels = channels * temporal * spatial * spatial
        self.scale_factor = scale_factor

    @property
    def encoder_id(self) -> str:
        return f"space-to-depth:c{self.channels}:t{self.temporal_compression}:s{self.spatial_compression}" \
               f":x{self.scale_factor:g}"

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, C, F, H, W = video.shape
        self._check_video(F, H, W)
        t, s = self.temporal_compression, self.spatial_compression
        video = torch.cat([video[:, :, :1].expand(-1, -1, t, -1, -1), video[:, :, 1:]], dim=2)
        n = video.shape[2] // t
        z = video.reshape(B, C, n, t, H // s, s, W // s, s).permute(0, 1, 3, 5, 7, 2, 4, 6)
        z = z.reshape(B, C * t * s * s, n, H // s, W // s)
        return z * self.scale_factor if self.scale_factor != 1.0 else z.contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        B, Cz, n, h, w = latents.shape
        t, s, C = self.temporal_compression, self.spatial_compression, self.channels
        if Cz != self.latent_channels:
            raise InputError(f"latents: {Cz} channels; SpaceToDepthVAE(channels={C}, temporal={t}, "
                             f"spatial={s}) makes {self.latent_channels}")
        z = latents / self.scale_factor if self.scale_factor != 1.0 else latents
        x = z.reshape(B, C, t, s, s, n, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(B, C, n * t, h * s, w * s)
        # Latent frame 0 holds t copies of the first frame: their mean is the least-squares inverse.
        # Averaged in float64, where t equal values sum and divide exactly, so encoded videos round-trip.
        first = x[:, :, :t].double().mean(dim=2, keepdim=True).to(x.dtype)
        return torch.cat([first, x[:, :, t:]], dim=2)


class PoolVAE(VideoAutoencoder):
    def __init__(self, channels: int = 3, temporal: int = 4, spatial: int = 8):
        super().__init__()
        self.channels, self.temporal_compression, self.spatial_compression = channels, temporal, spatial
        self.latent_channels = channels

    @property
    def encoder_id(self) -> str:
        return f"pool:c{self.channels}:t{self.temporal_compression}:s{self.spatial_compression}"

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, C, F, H, W = video.shape
        self._check_video(F, H, W)
        t, s = self.temporal_compression, self.spatial_compression
        first = nn.functional.avg_pool3d(video[:, :, :1], (1, s, s))
        rest = nn.functional.avg_pool3d(video[:, :, 1:], (t, s, s)) if F > 1 else first[:, :, :0]
        return torch.cat([first, rest], dim=2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        B, C, n, h, w = latents.shape
        if C != self.latent_channels:
            raise InputError(f"latents: {C} channels; PoolVAE makes {self.latent_channels}")
        t, s = self.temporal_compression, self.spatial_compression
        # Frame f >= 1 belongs to latent (f + t - 1) // t, whose frames are centred at (k - 1) * t + (t + 1) / 2;
        # read each frame at its position on that latent time axis.
        frames = torch.arange(1 + (n - 1) * t, dtype=torch.float64)
        pos = ((frames - (t + 1) / 2) / t + 1).clamp(0, n - 1)
        pos[0] = 0
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=n - 1)
        frac = (pos - lo).to(latents.dtype).view(1, 1, -1, 1, 1)
        video = latents[:, :, lo] * (1 - frac) + latents[:, :, hi] * frac
        F = video.shape[2]
        video = video.permute(0, 2, 1, 3, 4).reshape(B * F, C, h, w)
        video = nn.functional.interpolate(video, scale_factor=s, mode="bilinear", align_corners=False)
        return video.reshape(B, F, C, h * s, w * s).permute(0, 2, 1, 3, 4)


def _diffusers_dir(path: Path, subfolder: str) -> Path:
    """A diffusers model directory: `path` itself, or `path/<subfolder>` of a full pipeline."""
    if (path / "config.json").is_file():
        return path
    if (path / subfolder / "config.json").is_file():
        return path / subfolder
    raise InputError(f"{path}: no config.json here or in {subfolder}/ (expected a diffusers "
                     f"{'AutoencoderKLCogVideoX' if subfolder == 'vae' else subfolder} directory)")


class CogVideoXVAE(VideoAutoencoder):
    def __init__(self, vae: nn.Module, scale_factor: float | None = None, encoder_window: int = 8,
                 decoder_window: int = 2, spatial_tiling: bool = False, sample_posterior: bool = True,
                 name: str = "cogvideox-vae"):
        super().__init__()
        if encoder_window <= 0 or encoder_window % self.temporal_compression:
            raise InputError(f"vae.encoder_window={encoder_window}: must be a positive multiple of "
                             f"{self.temporal_compression} (pixel frames per chunk)")
        if decoder_window <= 0:
            raise InputError(f"vae.decoder_window={decoder_window}: must be > 0 (latent frames per chunk)")
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = vae.config.latent_channels
        self.spatial_compression = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale_factor = float(vae.config.scaling_factor if scale_factor is None else scale_factor)
        self.vae.num_sample_frames_batch_size = encoder_window
        self.vae.num_latent_frames_batch_size = decoder_window
        if spatial_tiling:
            self.vae.enable_tiling()
        self.sample_posterior, self.name = sample_posterior, name

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        **kwargs) -> "CogVideoXVAE":
        """`path`: a diffusers AutoencoderKLCogVideoX directory, or a CogVideoX pipeline directory
        with vae/. Keyword arguments go to the constructor (windows, scale factor, tiling)."""
        from diffusers import AutoencoderKLCogVideoX

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: VAE directory does not exist")
        vae = AutoencoderKLCogVideoX.from_pretrained(_diffusers_dir(path, "vae"), torch_dtype=dtype)
        return cls(vae, name=f"cogvideox-vae:{path.resolve()}", **kwargs)

    @property
    def encoder_id(self) -> str:
        v = self.vae
        mode = "sample" if self.sample_posterior else "mode"
        return (f"{self.name}:{next(v.parameters()).dtype}:x{self.scale_factor:g}"
                f":enc{v.num_sample_frames_batch_size}:{mode}:tile{int(v.use_tiling)}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents in float32. Samples the posterior (the seed's DiagonalGaussianRegularizer) unless
        sample_posterior=False, which returns its mean."""
        _, _, F, H, W = video.shape
        self._check_video(F, H, W)
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(video.to(dtype)).latent_dist
        z = dist.sample(generator=generator) if self.sample_posterior else dist.mode()
        return z.float() * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scale_factor).to(dtype)).sample.float()
