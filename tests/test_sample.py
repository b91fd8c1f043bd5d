"""`longvid sample`: reproducible videos from recorded seeds, sidecars, skip-if-exists, sharding over
ranks, I2V conditioning and bad-input messages, with a tiny random-weight model and real ffmpeg."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

import longvid.sample
from longvid import config
from longvid.io import InputError
from longvid.sample import (
    Prompt,
    VideoSampler,
    plan,
    publish,
    read_prompts,
    sample_seed,
    sample_shard,
    shard,
    write_index,
)
from conftest import stage_args
from longvid.runtime import build_dit, build_encoders
from longvid.stages import BY_NAME
from longvid.models.export import export_model
from longvid.video import encode_frames, read_video

PROMPTS = ["a red circle moves right", "a blue square moves left", "a green circle moves up"]


def tiny_experiment(**sample) -> dict:
    return config.experiment("tiny", {"data": {"num_frames": 17},
                                      "sample": {"steps": 3, "cfg": 3.0, "samples_per_prompt": 2, **sample}})


def export_random_model(exp: dict, out: Path) -> Path:
    """A tiny DiT with every weight perturbed: at its init the zeroed adaLN makes the blocks identities,
    so the text would not reach the output and guidance would change nothing."""
    model = build_dit(exp, build_encoders(exp), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return export_model(model, exp, out, step=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_random_model(tiny_experiment(), tmp_path_factory.mktemp("model") / "final")


@pytest.fixture(scope="module")
def sampler(model_dir) -> VideoSampler:
    return VideoSampler(tiny_experiment(), model_dir, torch.device("cpu"))


def write_prompts(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_seeds_are_per_video_and_reproducible():
    seeds = {(i, j): sample_seed(1234, i, j) for i in range(20) for j in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    assert seeds[(3, 1)] == sample_seed(1234, 3, 1) and seeds[(3, 1)] != sample_seed(1235, 3, 1)
    assert all(0 <= s < 2 ** 63 for s in seeds.values())
    with pytest.raises(InputError, match="sample.seed=-1"):
        sample_seed(-1, 0, 0)


def test_same_seed_same_video_other_seed_other_video(sampler, tmp_path):
    prompt = read_prompts(write_prompts(tmp_path / "p.txt", PROMPTS[:1]), i2v=False)[0]
    lat_a, frames_a = sampler.generate(prompt, sample_seed(1234, 0, 0))
    lat_b, frames_b = sampler.generate(prompt, sample_seed(1234, 0, 0))
    lat_c, _ = sampler.generate(prompt, sample_seed(1234, 0, 1))
    assert torch.equal(lat_a, lat_b) and np.array_equal(frames_a, frames_b)
    assert not torch.allclose(lat_a, lat_c, atol=1e-3)
    assert frames_a.shape == (17, 64, 64, 3) and frames_a.dtype == np.uint8
    # the prompt reaches the output (guidance has something to act on)
    other = Prompt(0, PROMPTS[1], prompt.where)
    assert not torch.allclose(lat_a, sampler.generate(other, sample_seed(1234, 0, 0))[0], atol=1e-4)


def test_run_writes_videos_sidecars_index_and_skips_finished(model_dir, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS[:2])
    out = tmp_path / "samples"
    exp = tiny_experiment()
    # a single-process "torchrun" world; monkeypatch restores the launcher variables afterwards
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for k, v in launch.items():
        monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser()
    BY_NAME["sample"].add_arguments(p)
    args = p.parse_args([*stage_args("experiment", "tiny", "sample", exp, tmp_path), "--model", str(model_dir),
                         "--out-dir", str(out), "--work-dir", str(out), "--prompts", str(prompts)])
    assert BY_NAME["sample"].run(args) == 0

    names = [f"{i:04d}_{j:02d}" for i in range(2) for j in range(2)]
    assert sorted(f.name for f in out.iterdir()) == sorted(
        [f"{n}.mp4" for n in names] + [f"{n}.json" for n in names] + ["index.json"])
    side = json.loads((out / "0001_01.json").read_text())
    assert side["prompt"] == PROMPTS[1] and side["source"] == f"{prompts}:2"
    assert side["seed"] == sample_seed(1234, 1, 1) and side["base_seed"] == 1234
    assert (side["sampler"], side["steps"], side["cfg"], side["dynamic_cfg"]) == ("dpmpp_2m_sde", 3, 3.0, "none")
    assert (side["num_frames"], side["fps"], side["height"], side["width"]) == (17, 8, 64, 64)
    assert side["negative_prompt"] == "" and side["model_size"] == "tiny" and side["condition"] is None
    assert side["checkpoint"]["step"] == 7 and side["checkpoint"]["path"] == str(model_dir)
    assert len(side["checkpoint"]["sha256"]) == 64

    video = read_video(out / "0001_01.mp4")
    assert video.shape == (17, 64, 64, 3)
    with av.open(str(out / "0001_01.mp4")) as c:
        assert c.streams.video[0].average_rate == 8
    # The file holds the video its recorded seed makes. The random model's output is per-pixel noise,
    # whose colour 4:2:0 chroma subsampling cannot keep, so compare brightness.
    sampler = VideoSampler(exp, model_dir, torch.device("cpu"))
    prompt = read_prompts(prompts, False)[1]
    recorded, other = (sampler.generate(prompt, seed)[1] for seed in (side["seed"], side["seed"] + 1))
    assert np.abs(luma(video) - luma(recorded)).mean() < 6 < np.abs(luma(video) - luma(other)).mean()

    index = json.loads((out / "index.json").read_text())
    assert index["count"] == 4 and [r["video"] for r in index["samples"]] == [f"{n}.mp4" for n in names]

    # rerun: nothing regenerated
    mtimes = {f.name: f.stat().st_mtime_ns for f in out.glob("*.mp4")}
    items = plan(exp, model_dir, prompts)
    assert sample_shard(items, exp, model_dir, out) == []
    assert {f.name: f.stat().st_mtime_ns for f in out.glob("*.mp4")} == mtimes

    # a video without its sidecar (killed between the two renames) is made again, alone
    (out / "0000_01.json").unlink()
    assert [w.name for w in sample_shard(items, exp, model_dir, out)] == ["0000_01.mp4"]

    # changed guidance: every video is stale
    changed = tiny_experiment(cfg=1.5)
    written = sample_shard(plan(changed, model_dir, prompts), changed, model_dir, out)
    assert sorted(w.name for w in written) == sorted(mtimes)
    assert json.loads((out / "0000_00.json").read_text())["cfg"] == 1.5
    # killed after replacing a video, before its sidecar: the old sidecar must not vouch for it
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(longvid.sample, "write_json", killed)
        with pytest.raises(KeyboardInterrupt):
            sample_shard(items, exp, model_dir, out)  # back to cfg 3: 0000_00.mp4 replaced, then killed
    assert [w.name for w in sample_shard(plan(changed, model_dir, prompts), changed, model_dir, out)] == [
        "0000_00.mp4"]
    assert not [f for f in out.iterdir() if f.name.startswith(".")]


def test_two_ranks_cover_every_item_once(model_dir, tmp_path):
    assert shard(7, 0, 2) == [0, 2, 4, 6] and shard(7, 1, 2) == [1, 3, 5]
    assert sorted(shard(10, 0, 3) + shard(10, 1, 3) + shard(10, 2, 3)) == list(range(10))
    exp = tiny_experiment(samples_per_prompt=1, steps=2)
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS)
    items = plan(exp, model_dir, prompts)
    out = tmp_path / "samples"
    with pytest.raises(RuntimeError, match="0000_00.mp4: missing"):
        write_index(items, out)
    r0 = sample_shard(items, exp, model_dir, out, rank=0, world_size=2)
    r1 = sample_shard(items, exp, model_dir, out, rank=1, world_size=2)
    assert [p.name for p in r0] == ["0000_00.mp4", "0002_00.mp4"] and [p.name for p in r1] == ["0001_00.mp4"]
    index = json.loads(write_index(items, out).read_text())
    assert [r["prompt"] for r in index["samples"]] == PROMPTS
    # a video does not depend on which rank made it, nor on what else that rank made
    single = tmp_path / "single"
    sample_shard(items, exp, model_dir, single)
    for name in ("0000_00.mp4", "0001_00.mp4", "0002_00.mp4"):
        assert (out / name).read_bytes() == (single / name).read_bytes()


def test_negative_prompt_changes_the_unconditional_branch(model_dir, tmp_path):
    prompt = read_prompts(write_prompts(tmp_path / "p.txt", PROMPTS[:1]), i2v=False)[0]
    plain = VideoSampler(tiny_experiment(steps=2), model_dir, torch.device("cpu"))
    neg = VideoSampler(tiny_experiment(steps=2, negative_prompt="blurry"), model_dir, torch.device("cpu"))
    assert plain.uncond is None and neg.uncond.abs().sum() > 0
    assert not torch.allclose(plain.generate(prompt, 5)[0], neg.generate(prompt, 5)[0], atol=1e-4)


def test_prompt_file_problems_name_file_and_line(tmp_path, caplog):
    p = write_prompts(tmp_path / "p.txt", ["first", "", "   ", "second"])
    with caplog.at_level(logging.WARNING):
        got = read_prompts(p, i2v=False)
    assert [(x.index, x.text, x.where) for x in got] == [(0, "first", f"{p}:1"), (1, "second", f"{p}:4")]
    assert f"{p}:2: empty line skipped" in caplog.text and f"{p}:3: empty line skipped" in caplog.text

    with pytest.raises(InputError, match=f"{p}: no prompts"):
        read_prompts(write_prompts(p, ["", " "]), i2v=False)
    with pytest.raises(InputError, match="nope.txt: prompt file does not exist"):
        read_prompts(tmp_path / "nope.txt", i2v=False)
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match=f"{p}:2: I2V image {tmp_path}/missing.png does not exist"):
        read_prompts(write_prompts(p, ["a@@x.png", "b@@missing.png"]), i2v=True)
    with pytest.raises(InputError, match=f"{p}:1: nothing after '@@'"):
        read_prompts(write_prompts(p, ["a@@ "]), i2v=True)
    with pytest.raises(InputError, match=f"{p}:1: '@@' gives an I2V image, but the model is not an I2V model"):
        read_prompts(write_prompts(p, ["a@@x.png"]), i2v=False)
    with pytest.raises(InputError, match=f"{p}:1: an I2V model needs"):
        read_prompts(write_prompts(p, ["just text"]), i2v=True)


def test_bad_checkpoint_is_one_clear_error_and_nothing_is_lost(model_dir, tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS[:1])
    out = tmp_path / "samples"
    out.mkdir()
    (out / "0000_00.mp4").write_bytes(b"an earlier video")
    exp = tiny_experiment()
    with pytest.raises(InputError, match=f"{tmp_path}/nowhere: model directory does not exist"):
        plan(exp, tmp_path / "nowhere", prompts)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(InputError, match=f"{broken}/config.json: missing"):
        plan(exp, broken, prompts)
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    items = plan(exp, broken, prompts)  # identity only hashes; loading names the file
    with pytest.raises(InputError, match=f"{broken}/model.safetensors: unreadable exported model"):
        sample_shard(items, exp, broken, out)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=f"{broken}/config.json: not an exported longvid model"):
        plan(exp, broken, prompts)
    assert (out / "0000_00.mp4").read_bytes() == b"an earlier video"


def test_bad_sample_settings_name_the_key(model_dir, tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS[:1])
    with pytest.raises(InputError, match="sample.num_frames=20: must be 4N\\+1"):
        plan(tiny_experiment(num_frames=20), model_dir, prompts)
    # 4N+1 but not a whole number of attention windows (tiny: prefix 1 + windows of 4 latent frames)
    with pytest.raises(InputError, match="sample.num_frames=13:.*attn_window"):
        VideoSampler(tiny_experiment(num_frames=13), model_dir, torch.device("cpu"))


def test_i2v_image_conditions_the_video(tmp_path):
    """A miniature 5b-i2v (image latent concatenated on channels, learnable positions): the image
    named after '@@' reaches the model and its hash goes into the sidecar."""
    exp = config.experiment("tiny", {
        "model": {"size": "5b-i2v", "overrides": {"hidden_size": 64, "num_layers": 1, "num_heads": 4,
                                                  "time_embed_dim": 64, "mamba_d_state": 16,
                                                  "mamba_chunk_size": 16,
                                                  "pos_embed": "rope"}},  # tiny's sin-cos: not with I2V
        "data": {"num_frames": 17}, "sample": {"steps": 2, "cfg": 2.0}})
    model_dir = export_random_model(exp, tmp_path / "i2v")
    red = np.zeros((48, 80, 3), np.uint8)
    red[..., 0] = 220
    cv2.imwrite(str(tmp_path / "red.png"), red[..., ::-1])  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "noise.png"), np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8))
    clip = np.full((9, 48, 80, 3), 30, np.uint8)
    clip[0] = red
    encode_frames(tmp_path / "clip.mp4", clip, fps=8)  # a video: its first frame conditions
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=f"p.txt:2: I2V image {tmp_path}/empty.png is unreadable"):
        plan(exp, model_dir, write_prompts(tmp_path / "p.txt", ["a ball@@red.png", "a ball@@empty.png"]))

    prompts = write_prompts(tmp_path / "p.txt", ["a ball@@red.png", "a ball@@noise.png", "a ball@@clip.mp4"])
    items = plan(exp, model_dir, prompts)
    assert items[0][2]["condition"]["path"] == str(tmp_path / "red.png")
    assert items[0][2]["condition"]["sha256"] != items[1][2]["condition"]["sha256"]
    sampler = VideoSampler(exp, model_dir, torch.device("cpu"))
    z_red, z_noise, z_clip = (sampler.condition_latent(p.condition, p.where) for p, _, _ in items)
    assert z_red.shape == (1, 5, sampler.enc.vae.latent_channels, 8, 8) and not z_red[:, 1:].any()
    assert (z_red - z_clip).abs().mean() < 0.05 < (z_red - z_noise).abs().mean()
    red_video, noise_video = (sampler.generate(p, 11)[0] for p, _, _ in items[:2])
    assert torch.equal(red_video, sampler.generate(items[0][0], 11)[0])
    assert not torch.allclose(red_video, noise_video, atol=1e-4)


def test_published_set_survives_the_output_directory_being_emptied(model_dir, tmp_path):
    """The rule's output is results/samples/{exp}, which Snakemake deletes before a rerun: the videos
    live in the work directory and the output only links to them."""
    exp = tiny_experiment(samples_per_prompt=1)
    items = plan(exp, model_dir, write_prompts(tmp_path / "p.txt", PROMPTS))
    work, out = tmp_path / "work", tmp_path / "out"
    assert len(sample_shard(items, exp, model_dir, work)) == 3
    write_index(items, work)
    index = publish(items, work, out)
    assert json.loads(index.read_text())["count"] == 3
    assert (out / "0002_00.mp4").stat().st_ino == (work / "0002_00.mp4").stat().st_ino  # a link, not a copy
    shutil.rmtree(out)
    assert sample_shard(items, exp, model_dir, work) == []  # nothing is made again
    publish(items, work, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in work.iterdir())
