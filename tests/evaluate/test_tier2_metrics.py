"""Tier-2 plumbing with real, tiny stand-ins for the pretrained weights: a TorchScript feature
extractor saved by the test (called the way StyleGAN-V's I3D is) and a random CLIP written with
save_pretrained. The numbers mean nothing; the windows, the Frechet distance, frame averaging and the
skip reasons are what is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from longvid.evaluate.tier2 import clip_score, frechet_distance, fvd, vbench, window_starts, windows_of

CPU = torch.device("cpu")


class MeanColourPerFrame(torch.nn.Module):
    """Features: per-channel means of the first and second half of the window."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                return_features: bool = True) -> torch.Tensor:
        half = x.shape[2] // 2
        return torch.cat([x[:, :, :half].mean(dim=(2, 3, 4)), x[:, :, half:].mean(dim=(2, 3, 4))], dim=1)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fvd") / "extractor.pt"
    torch.jit.script(MeanColourPerFrame()).save(str(path))
    return str(path)


def videos(n: int, frames: int, seed: int, shift: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(rng.normal(120 + shift, 30, (frames, 16, 16, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    a = (a - a.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(a, rowvar=False))).T  # covariance exactly I
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # same covariance, means 2 apart on each of 3 axes: the distance is |mu_a - mu_b|^2 = 12
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, abs=1e-6)
    # covariance I vs diag(4, 1, 1): (1 - 2)^2 = 1
    b = a.copy()
    b[:, 0] *= 2
    assert frechet_distance(a, b) == pytest.approx(1.0, rel=1e-6)


def test_windows_spread_over_the_whole_video():
    assert window_starts(145, 4, 16) == [0, 43, 86, 129]
    assert window_starts(16, 4, 16) == [0]  # exactly one fits
    assert window_starts(10, 4, 16) == []
    video = np.arange(49)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    got = windows_of(video, {"windows": 2, "length": 4, "stride": 3})  # span (4-1)*3+1 = 10
    assert [w[:, 0, 0, 0].tolist() for w in got] == [[0, 3, 6, 9], [39, 42, 45, 48]]


def test_fvd_with_a_torchscript_extractor(extractor):
    cfg = {"extractor_path": extractor, "extractor_kwargs": {"rescale": False, "resize": True,
                                                            "return_features": True},
           "windows": 3, "length": 8, "stride": 2}
    real = videos(6, 33, seed=0)
    same = fvd(cfg, real, real, CPU)
    assert same["status"] == "ok" and same["value"] == pytest.approx(0.0, abs=1e-9)
    assert same["sample_windows"] == 18 and same["feature_dim"] == 6
    near, far = fvd(cfg, videos(6, 33, 1, 5), real, CPU), fvd(cfg, videos(6, 33, 1, 60), real, CPU)
    assert 0 < near["value"] < far["value"]


def test_fvd_skips_with_reasons(extractor, tmp_path):
    assert fvd(None, [], [], CPU)["reason"].startswith("evaluate.fvd not configured")
    missing = fvd({"extractor_path": str(tmp_path / "nope.pt"), "extractor_kwargs": {}, "windows": 1,
                   "length": 16, "stride": 1}, videos(2, 33, 0), videos(2, 33, 0), CPU)
    assert missing["status"] == "skipped" and "nope.pt does not exist" in missing["reason"]
    short = fvd({"extractor_path": extractor, "extractor_kwargs": {}, "windows": 2, "length": 16, "stride": 4},
                videos(2, 33, 0), videos(2, 33, 0), CPU)
    assert short["status"] == "skipped" and "too short" in short["reason"]
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    junk = fvd({"extractor_path": str(tmp_path / "junk.pt"), "extractor_kwargs": {}, "windows": 1, "length": 8,
                "stride": 1}, videos(2, 9, 0), videos(2, 9, 0), CPU)
    assert junk["status"] == "skipped" and "junk.pt" in junk["reason"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random CLIP with a letters-only tokenizer, saved as a Hugging Face directory."""
    vocab = {}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    ids = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    config = CLIPConfig(text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 2,
                                     "max_position_embeddings": 77, **ids},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("clip") / "clip"
    CLIPModel(config).save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(out)
    return str(out)


def test_clip_score_averages_over_frames(clip_dir):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    cfg = {"model_path": clip_dir, "frames": 2}
    prompt = "a red circle moves right " * 30  # past 77 tokens: truncated, not an error
    only_a = clip_score(cfg, [np.repeat(a, 5, 0)], [prompt], CPU)["value"]
    only_b = clip_score(cfg, [np.repeat(b, 5, 0)], [prompt], CPU)["value"]
    mixed = clip_score(cfg, [np.concatenate([np.repeat(a, 5, 0), np.repeat(b, 5, 0)])], [prompt], CPU)
    assert mixed["status"] == "ok" and only_a != only_b
    assert mixed["value"] == pytest.approx((max(only_a, 0) + max(only_b, 0)) / 2, abs=1e-4)
    other = clip_score(cfg, [np.repeat(a, 5, 0)], ["a blue square moves up"], CPU)["value"]
    assert other != only_a  # the text reaches the score


def test_clip_and_vbench_skip_with_reasons(tmp_path):
    assert clip_score(None, [], [], CPU)["reason"].startswith("evaluate.clip not configured")
    assert "is not a directory" in clip_score({"model_path": str(tmp_path / "x"), "frames": 2}, [], [], CPU)["reason"]
    (tmp_path / "empty").mkdir()
    broken = clip_score({"model_path": str(tmp_path / "empty"), "frames": 2}, [], [], CPU)
    assert broken["status"] == "skipped" and "empty" in broken["reason"]
    assert vbench(None, [], [], CPU)["reason"].startswith("evaluate.vbench not configured")
    assert "is not a directory" in vbench({"dimensions": ["dynamic_degree"], "weights_dir": str(tmp_path / "w")},
                                          [], [], CPU)["reason"]
    result = vbench({"dimensions": ["dynamic_degree"], "weights_dir": str(tmp_path)}, [], [], CPU)
    assert result["status"] == "skipped" and "vbench" in result["reason"]  # not installed here
