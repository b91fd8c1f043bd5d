"""VideoClipDataset on real videos (rendered shapes, real ffmpeg/PyAV) and the resumable sampler."""

from __future__ import annotations

import json
import re

import ffmpeg
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from longvid.dataset.sampler import ResumableDistributedSampler
from longvid.dataset.loader import ClipError, VideoClipDataset, frames_at_fps, plan_frames
from longvid.shapes import DIRECTIONS, caption_of, render_video
from longvid.io import InputError
from longvid.video import DECODERS, cover_size, encode_frames, run_ffmpeg

BITS = 8  # frame number written as 8 black/white blocks, 8 px each: survives lossy coding exactly


def shot(direction: str, n: int) -> dict:
    return {"shape": "circle", "color": "red", "direction": direction, "background": "black",
            "start_frame": 0, "end_frame": n}


def row(path: str, n: int, fps: float, w: int, h: int, text: str = "a clip", **extra) -> dict:
    return {"path": path, "num_frames": n, "fps": fps, "width": w, "height": h, "duration": n / fps,
            "text": text, "id": path.split("/")[-1].split(".")[0], **extra}


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def render_shot_clip(root, name, direction, n, fps, h, w) -> dict:
    s = shot(direction, n)
    render_video(root / "clips" / f"{name}.mp4", [s], fps, h, w)
    return row(f"clips/{name}.mp4", n, fps, w, h, caption_of(s), meta={"shot": s})


def render_counter_clip(path, n, fps) -> None:
    """Frame i shows i in binary; re-encoded with short GOPs and B-frames so seeking is exercised."""
    frames = np.zeros((n, 16, 8 * BITS, 3), np.uint8)
    for i in range(n):
        for bit in range(BITS):
            frames[i, :, 8 * bit:8 * bit + 8] = 255 * ((i >> bit) & 1)
    raw = path.with_name("raw_" + path.name)
    encode_frames(raw, frames, fps)
    run_ffmpeg(ffmpeg.input(str(raw)).output(str(path), vcodec="libx264", g=6, bf=2, crf=12, pix_fmt="yuv420p"))


def read_counter(video: torch.Tensor) -> list[int]:
    blocks = video[:, :, 4:12].reshape(video.shape[0], 3, 8, BITS, 8).mean(dim=(1, 2, 4))  # (F, BITS)
    return [int(sum(1 << b for b in range(BITS) if v[b] > 0)) for v in blocks]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    (root / "clips").mkdir()
    rows = [render_shot_clip(root, "left", "left", 60, 24, 64, 96),
            render_shot_clip(root, "down", "down", 75, 30, 64, 96),
            render_shot_clip(root, "short", "right", 20, 24, 64, 96)]
    render_counter_clip(root / "clips" / "counter.mp4", 200, 30)
    rows.append(row("clips/counter.mp4", 200, 30, 8 * BITS, 16))
    write_jsonl(root / "train.jsonl", rows)
    return root


def test_plan_frames_strides_and_short_clips():
    idx, real = plan_frames(60, 24, 17, 8)  # stride 3
    assert real == 17 and idx.tolist() == list(range(0, 49, 3))
    idx, _ = plan_frames(200, 30, 9, 8)  # stride 3.75: nearest frames
    assert idx.tolist() == [0, 4, 8, 11, 15, 19, 23, 26, 30]
    idx, _ = plan_frames(200, 30, 9, 8, rng=np.random.default_rng(1))
    assert idx[0] > 0 and (idx - idx[0]).tolist() == [0, 4, 8, 11, 15, 19, 23, 26, 30]
    idx, real = plan_frames(20, 24, 17, 8)  # 7 frames at 8 fps: keeps 5 (4k+1), repeats the last
    assert frames_at_fps(20, 24, 8) == 7 and real == 5
    assert idx.tolist() == [0, 3, 6, 9, 12] + [12] * 12
    idx, real = plan_frames(10, 4, 9, 8)  # 4 -> 8 fps: each source frame twice
    assert real == 9 and idx.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert plan_frames(100, 24, 9, 8, skip=5)[0][0] == 5
    assert cover_size(120, 160, 64, 64) == (64, 85) and cover_size(160, 120, 64, 64) == (85, 64)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoded_frames_are_the_planned_source_frames(clips, decoder):
    ds = VideoClipDataset(clips / "train.jsonl", num_frames=9, fps=8, height=16, width=8 * BITS, seed=3,
                          decoder=decoder)
    counter = ds.rows.index(next(r for r in ds.rows if r["id"] == "counter"))
    starts = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[counter]
        indices = item["frame_indices"].tolist()
        assert read_counter(item["video"]) == indices  # what was decoded is what was planned
        assert [i - indices[0] for i in indices] == [0, 4, 8, 11, 15, 19, 23, 26, 30]
        starts.add(indices[0])
    assert len(starts) > 1 and max(starts) > 12  # random starts, including ones that need a seek


@pytest.mark.parametrize("decoder", DECODERS)
def test_seeking_in_formats_without_an_index(clips, tmp_path, decoder):
    """MPEG-TS seeks land after the target keyframe; the loader must notice and seek further back.
    (decord misnumbers MPEG-TS frames: `decoder="decord"` falls back to PyAV here, still exact.)"""
    run_ffmpeg(ffmpeg.input(str(clips / "clips" / "counter.mp4")).output(str(tmp_path / "counter.ts"), c="copy"))
    write_jsonl(tmp_path / "d.jsonl", [row("counter.ts", 200, 30, 8 * BITS, 16)])
    ds = VideoClipDataset(tmp_path / "d.jsonl", num_frames=9, fps=8, height=16, width=8 * BITS, seed=5,
                          decoder=decoder)
    starts = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[0]
        assert read_counter(item["video"]) == item["frame_indices"].tolist()
        starts.append(int(item["frame_indices"][0]))
    assert max(starts) > 60, starts


@pytest.mark.parametrize("decoder", DECODERS)
def test_dropped_frames_show_the_frame_on_screen(clips, tmp_path, decoder):
    """A variable-frame-rate file missing frames 10-12: those times show frame 9, as a player would."""
    run_ffmpeg(ffmpeg.input(str(clips / "clips" / "counter.mp4"))
               .filter("select", "not(between(n,10,12))")
               .output(str(tmp_path / "vfr.mp4"), fps_mode="vfr", vcodec="libx264", crf=12))
    write_jsonl(tmp_path / "d.jsonl", [row("vfr.mp4", 200, 30, 8 * BITS, 16)])
    ds = VideoClipDataset(tmp_path / "d.jsonl", num_frames=17, fps=30, height=16, width=8 * BITS,
                          random_start=False, decoder=decoder)
    assert read_counter(ds[0]["video"]) == list(range(10)) + [9, 9, 9] + [13, 14, 15, 16]


def test_caption_lists_are_drawn_per_item(clips, tmp_path):
    caps = [{"cap": f"caption {k}"} for k in range(4)]
    write_jsonl(tmp_path / "d.jsonl", [row("counter.mp4", 200, 30, 8 * BITS, 16, caps=caps)])
    ds = VideoClipDataset(tmp_path / "d.jsonl", root=clips / "clips", num_frames=9, height=16, width=8 * BITS,
                          text_key="caps", sub_text_key="cap")
    texts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        texts.append(ds[0]["text"])
    assert set(texts) <= {c["cap"] for c in caps} and len(set(texts)) > 1
    ds.set_epoch(0)
    assert ds[0]["text"] == texts[0]


def centroids(video: torch.Tensor) -> np.ndarray:
    """(F, 2) x, y centre of the red object (background black)."""
    out = []
    for frame in video:
        mask = (frame[0] > 0) & (frame[1] < 0)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        out.append((xs.float().mean().item(), ys.float().mean().item()))
    return np.array(out)


@pytest.mark.parametrize("name", ["left", "down"])
def test_object_moves_as_the_ground_truth_says(clips, name):
    ds = VideoClipDataset(clips / "train.jsonl", num_frames=17, fps=8, height=48, width=72, seed=0)
    index = next(i for i, r in enumerate(ds.rows) if r["id"] == name)
    item = ds[index]
    video = item["video"]
    assert video.shape == (17, 3, 48, 72) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.max() > 0.5 and video.min() < -0.8
    assert item["num_frames"] == 17 and not item["padded"] and item["fps"] == 8
    row = ds.rows[index]
    vx, vy = DIRECTIONS[row["meta"]["shot"]["direction"]]
    # where render_shot put the object in each sampled source frame, scaled 96x64 -> 72x48
    p = item["frame_indices"].numpy() / (row["num_frames"] - 1) - 0.5
    r = 64 / 8
    expected = np.stack([(96 / 2 + vx * p * (96 - 3 * r) + 0.5) * 0.75 - 0.5,  # pixel centres scale
                         (64 / 2 + vy * p * (64 - 3 * r) + 0.5) * 0.75 - 0.5], axis=1)
    got = centroids(video)
    assert np.abs(got - expected).max() < 1.5
    travel = got[-1] - got[0]
    assert np.sign(np.round(travel / 10)).tolist() == [vx, vy]


def test_resize_covers_and_crops_the_center(tmp_path):
    frames = np.zeros((10, 64, 96, 3), np.uint8)
    frames[:, :, :16] = (255, 0, 0)
    frames[:, :, 16:80] = (0, 255, 0)
    frames[:, :, 80:] = (0, 0, 255)
    encode_frames(tmp_path / "stripes.mp4", frames, 8)
    write_jsonl(tmp_path / "d.jsonl", [row("stripes.mp4", 10, 8, 96, 64)])
    video = VideoClipDataset(tmp_path / "d.jsonl", num_frames=9, fps=8, height=32, width=32)[0]["video"]
    assert video.shape == (9, 3, 32, 32)
    # 96x64 -> 48x32, columns 8..40 kept: exactly the green band (source columns 16..80)
    cols = video.mean(dim=(0, 2))  # (3, 32) per column colour
    assert cols[1, 2:-2].min() > 0.9  # inside: pure green; the edge columns see bicubic/chroma bleed
    # a crop one column off would make an edge column mostly red or blue
    assert cols[1].min() > 0.5 and cols[0].max() < 0 and cols[2].max() < 0


def test_short_clip_is_padded_and_reported(clips, caplog):
    with caplog.at_level("WARNING"):
        ds = VideoClipDataset(clips / "train.jsonl", num_frames=17, fps=8, height=32, width=48)
    short = next(i for i, r in enumerate(ds.rows) if r["id"] == "short")
    assert ds.short_rows == [short]  # 20 frames at 24 fps are 7 at 8 fps; the others have >= 17
    assert re.search(r"1 of 4 clips have fewer frames than needed at 8 fps.*line 3", caplog.text)
    item = ds[short]
    assert item["num_frames"] == 5 and item["padded"] and item["video"].shape[0] == 17
    assert torch.equal(item["video"][4:], item["video"][4:5].expand(13, -1, -1, -1))
    assert not torch.equal(item["video"][3], item["video"][4])


def test_items_are_deterministic_across_instances_orders_and_workers(clips):
    kwargs = dict(num_frames=9, fps=8, height=32, width=48, seed=11)
    a = VideoClipDataset(clips / "train.jsonl", **kwargs)
    b = VideoClipDataset(clips / "train.jsonl", **kwargs)
    direct = [a[i] for i in range(len(a))]
    reverse = [b[i] for i in reversed(range(len(b)))][::-1]
    loaded = list(DataLoader(b, batch_size=None, num_workers=2))
    for x, y, z in zip(direct, reverse, loaded):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["video"], z["video"])
        assert x["frame_indices"].tolist() == z["frame_indices"].tolist() and x["text"] == z["text"]
    other_seed = VideoClipDataset(clips / "train.jsonl", **{**kwargs, "seed": 12})
    assert any(not torch.equal(x["frame_indices"], other_seed[i]["frame_indices"])
               for i, x in enumerate(direct))


def test_num_frames_must_be_8n_plus_1(clips):
    with pytest.raises(InputError, match=r"num_frames: 48 is not 8N\+1"):
        VideoClipDataset(clips / "train.jsonl", num_frames=48)
    ds = VideoClipDataset(clips / "train.jsonl", num_frames=9)
    with pytest.raises(InputError, match=r"sizes\[1\] frames: 16 is not 8N\+1"):
        ds.set_sizes([None, (16, 32, 32), None, None])


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "clips/../../outside.mp4"])
def test_paths_outside_the_root_are_rejected_with_file_and_line(clips, tmp_path, bad):
    jsonl = tmp_path / "d.jsonl"
    write_jsonl(jsonl, [row(str(clips / "clips" / "left.mp4"), 60, 24, 96, 64), row(bad, 60, 24, 96, 64)])
    for on_error in ("raise", "skip"):
        with pytest.raises(InputError, match=rf"^{re.escape(str(jsonl))}:2: path .* outside the dataset"):
            VideoClipDataset(jsonl, root=clips, on_error=on_error)


def test_missing_and_corrupt_files_name_file_and_line(clips, tmp_path, caplog):
    (clips / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 50)
    jsonl = tmp_path / "d.jsonl"
    write_jsonl(jsonl, [row("clips/left.mp4", 60, 24, 96, 64), row("clips/missing.mp4", 60, 24, 96, 64),
                        row("clips/corrupt.mp4", 60, 24, 96, 64), row("clips/down.mp4", 75, 30, 96, 64),
                        row("clips/left.mp4", 200, 24, 96, 64, id="lying")])
    ds = VideoClipDataset(jsonl, root=clips, num_frames=17, height=32, width=48)
    with pytest.raises(ClipError, match=rf"^{re.escape(str(jsonl))}:2: cannot read clips/missing.mp4"):
        ds[1]
    with pytest.raises(ClipError, match=rf"^{re.escape(str(jsonl))}:3: cannot read clips/corrupt.mp4"):
        ds[2]
    ds = VideoClipDataset(jsonl, root=clips, num_frames=49, height=32, width=48, random_start=False)
    with pytest.raises(ClipError, match=r":5: cannot read .*stream ends at frame 59"):
        ds[4]  # the row claims 200 frames, the file has 60
    skipping = VideoClipDataset(jsonl, root=clips, num_frames=17, height=32, width=48, on_error="skip")
    with caplog.at_level("WARNING"):
        item = skipping[1]
    assert item["id"] == "down" and item["index"] == 3  # the next decodable row, not a random one
    assert ":2: cannot read clips/missing.mp4" in caplog.text and ":3: cannot read" in caplog.text


def test_bad_rows_raise_or_are_dropped(tmp_path, caplog):
    jsonl = tmp_path / "d.jsonl"
    write_jsonl(jsonl, [row("a.mp4", 60, 24, 96, 64), {**row("b.mp4", 60, 24, 96, 64), "text": ""}])
    with pytest.raises(InputError, match=rf"{re.escape(str(jsonl))}:2: no caption under key `text`"):
        VideoClipDataset(jsonl)
    with caplog.at_level("WARNING"):
        assert len(VideoClipDataset(jsonl, on_error="skip")) == 1
    assert ":2: no caption" in caplog.text


# ----------------------------------------------------------------------------- sampler


def steps(sampler, loader, n):
    """A trainer's loop: take batches, report each one consumed, across epochs."""
    out = []
    while True:
        for batch in loader:
            out.append(batch.tolist())
            sampler.advance(len(batch))
            if len(out) == n:
                return out


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = ResumableDistributedSampler(50, seed=4), ResumableDistributedSampler(50, seed=4)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(ResumableDistributedSampler(50, seed=5)) != first


def test_sampler_resumes_exactly_despite_prefetching_workers():
    data = list(range(10))
    ref = ResumableDistributedSampler(10, seed=1, batch_size=3)
    reference = steps(ref, DataLoader(data, batch_size=3, sampler=ref), 20)  # 3 batches per epoch
    run = ResumableDistributedSampler(10, seed=1, batch_size=3)
    loader = DataLoader(data, batch_size=3, sampler=run, num_workers=1, prefetch_factor=4)
    before = steps(run, loader, 7)  # mid-epoch 2; the workers have fetched further
    state = run.state_dict()
    assert state["epoch"] == 2 and state["consumed"] == 3
    resumed = ResumableDistributedSampler(10, seed=1, batch_size=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    after = steps(resumed, DataLoader(data, batch_size=3, sampler=resumed), 13)
    assert before + after == reference
    with pytest.raises(InputError, match="seed=1, this run has seed=2"):
        ResumableDistributedSampler(10, seed=2, batch_size=3).load_state_dict(state)


@pytest.mark.parametrize("n, drop_last", [(37, True), (37, False), (40, True)])
def test_two_ranks_together_equal_one_process(n, drop_last):
    single = ResumableDistributedSampler(n, 0, 1, seed=9, drop_last=drop_last, batch_size=4)
    ranks = [ResumableDistributedSampler(n, r, 2, seed=9, drop_last=drop_last, batch_size=2) for r in (0, 1)]
    for epoch in range(2):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        glob = list(single)
        r0, r1 = list(ranks[0]), list(ranks[1])
        assert len(r0) == len(r1) == len(glob) // 2
        for k in range(0, len(r0), 2):
            assert r0[k:k + 2] + r1[k:k + 2] == glob[2 * k:2 * k + 4]
        assert len(set(glob)) == (n // 4 * 4 if drop_last else n)
    # a 2-rank run resumed on one process carries on with the same global batches
    for s in ranks:
        s.set_epoch(0)
        s.position = 0
        s.advance(6)
    one = ResumableDistributedSampler(n, 0, 1, seed=9, drop_last=drop_last, batch_size=4)
    one.load_state_dict(ranks[0].state_dict())
    single.set_epoch(0)
    assert list(one) == list(single)[12:]
