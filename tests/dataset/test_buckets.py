"""Bucket assignment, token budget, and the bucketed batch sampler (alone and feeding the dataset)."""

from __future__ import annotations

import json

import pytest
from torch.utils.data import DataLoader

from longvid.dataset.buckets import BucketBatchSampler, BucketPlan, assign_buckets, plan_buckets
from longvid.dataset.loader import VideoClipDataset, plan_frames
from longvid.io import InputError
from longvid.models.registry import SIZES
from longvid.models.vae import PoolVAE
from longvid.runtime import Geometry
from longvid.shapes import render_video

BUCKETS = [(17, 32, 64), (17, 64, 64), (17, 64, 32), (33, 64, 64)]
COGVIDEOX = Geometry(temporal=4, spatial=8, patch=2)


def rows_of(*specs):
    return [{"width": w, "height": h, "num_frames": n, "fps": fps} for w, h, n, fps in specs]


def test_latent_tokens():
    assert COGVIDEOX.tokens(49, 480, 720) == 13 * 30 * 45
    assert COGVIDEOX.tokens(145, 480, 720) == 37 * 30 * 45
    assert Geometry(temporal=8, spatial=4, patch=1).tokens(17, 64, 64) == 3 * 256
    with pytest.raises(InputError, match=r"num_frames=16: must be 4N\+1"):
        COGVIDEOX.tokens(16, 64, 64)


def test_geometry_comes_from_the_vae_and_the_dit():
    """Another VAE compression or DiT patch changes tokens, budgets, bucket sizes and padding (they
    were the literals 4, 8 and 2)."""
    tiny = SIZES["tiny"]
    fine = Geometry.of(PoolVAE(spatial=4), tiny)
    assert (fine.temporal, fine.spatial, fine.patch) == (4, 4, 2)
    assert fine.tokens(17, 64, 64) == 5 * 8 * 8 == 4 * COGVIDEOX.tokens(17, 64, 64)
    plan = plan_buckets([], [(17, 64, 64), (17, 32, 64)], max_tokens=640, geometry=fine)
    assert plan.tokens == [320, 160] and plan.batch_sizes == [2, 4]
    assert plan_buckets([], [(17, 64, 64), (17, 32, 64)], 640, COGVIDEOX).batch_sizes == [8, 16]
    assert plan_buckets([], [(17, 40, 40)], 640, fine).tokens == [5 * 5 * 5]  # 8 px cells, not 16
    with pytest.raises(InputError, match="multiples of 16"):
        plan_buckets([], [(17, 40, 40)], 640, COGVIDEOX)
    coarse = Geometry.of(PoolVAE(temporal=8), tiny.replace(time_compressed_rate=8, patch_size=1))
    assert coarse.tokens(17, 64, 64) == 3 * 8 * 8
    with pytest.raises(InputError, match=r"buckets\[0\] frames: 25 is not 16N\+1"):
        plan_buckets([], [(25, 64, 64)], 1000, coarse)
    with pytest.raises(InputError, match="model.time_compressed_rate=4: the VAE .* groups 8"):
        Geometry.of(PoolVAE(temporal=8), tiny)
    # a short clip keeps whole latent frames of its VAE: 14 frames at 8 fps -> 13 (4k+1) or 9 (8k+1)
    assert plan_frames(40, 24, 17, 8)[1] == 13 and plan_frames(40, 24, 17, 8, temporal=8)[1] == 9


def test_rows_go_to_the_closest_aspect_they_can_fill():
    rows = rows_of((128, 64, 40, 8),  # 2:1, 40 frames -> the wide bucket
                   (64, 64, 40, 8),  # square, fills 33: more frames wins the aspect tie
                   (64, 64, 20, 8),  # square, 20 frames: only the 17-frame square
                   (64, 128, 17, 8),  # tall
                   (100, 64, 40, 8),  # 1.56: closer to 2 (log ratio 0.25) than to 1 (0.45)
                   (64, 64, 10, 8),  # too short for all: left out
                   (64, 64, 100, 24))  # 100 frames at 24 fps are 34 at 8 fps
    plan = plan_buckets(rows, BUCKETS, 1000, COGVIDEOX, fps=8)
    assert plan.assignment == [0, 3, 1, 2, 0, None, 3]
    # placing clips needs no DiT (longvid encode is given none): the VAE's side gives the same buckets
    assert assign_buckets(rows, BUCKETS, Geometry.of_vae(PoolVAE()), fps=8) == plan.assignment
    assert plan.counts() == [2, 1, 1, 2] and plan.summary()["unassigned"] == 1
    assert plan.row_sizes[1] == (33, 64, 64) and plan.row_sizes[5] is None
    # counted at the target fps, not in source frames: 100 frames at 24 fps cannot fill 41 frames at 8
    long_row, two = rows_of((64, 64, 100, 24)), [(41, 64, 64), (33, 64, 64)]
    assert plan_buckets(long_row, two, 1000, COGVIDEOX, fps=8).assignment == [1]
    assert plan_buckets(long_row, two, 1000, COGVIDEOX).assignment == [0]


def test_batch_sizes_fill_the_token_budget():
    plan = plan_buckets([], BUCKETS + [(49, 128, 128)], 300, COGVIDEOX)
    assert plan.tokens == [5 * 2 * 4, 5 * 4 * 4, 5 * 4 * 2, 9 * 4 * 4, 13 * 8 * 8]
    assert plan.batch_sizes == [7, 3, 7, 2, 1]
    for tokens, bs in zip(plan.tokens, plan.batch_sizes):
        assert bs * tokens <= 300 < (bs + 1) * tokens or (bs == 1 and tokens > 300)


@pytest.mark.parametrize("bucket, message", [((16, 64, 64), r"buckets\[1\] frames: 16 is not 8N\+1"),
                                             ((17, 60, 64), r"buckets\[1\] height and width .* of 16"),
                                             ((17, 64), r"buckets\[1\] must be \[frames, height, width\]")])
def test_bad_buckets_are_named(bucket, message):
    with pytest.raises(InputError, match=message):
        plan_buckets([], [(17, 64, 64), bucket], 1000, COGVIDEOX)


def mixed_plan(batch_sizes):
    assignment = [i % 3 if i % 7 else None for i in range(60)]
    return BucketPlan(BUCKETS[:3], [40, 80, 40], list(batch_sizes), assignment, 320)


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_are_single_bucket_within_budget_and_seeded():
    rows = rows_of(*[(128 if i % 2 else 64, 64, 17 + i, 8) for i in range(40)])
    plan = plan_buckets(rows, BUCKETS, 200, COGVIDEOX, fps=8)
    sampler = BucketBatchSampler(plan, seed=3)
    batches = epoch_batches(sampler, 0)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))  # every row at most once per epoch
    for batch in batches:
        buckets = {plan.assignment[i] for i in batch}
        assert len(buckets) == 1
        b = buckets.pop()
        assert len(batch) == plan.batch_sizes[b] and len(batch) * plan.tokens[b] <= 200
    dropped = sum(n % bs for n, bs in zip(plan.counts(), plan.batch_sizes))
    assert len(seen) == len(plan.assignment) - plan.summary()["unassigned"] - dropped
    assert batches == epoch_batches(BucketBatchSampler(plan, seed=3), 0)
    assert batches != epoch_batches(BucketBatchSampler(plan, seed=4), 0)
    assert batches != epoch_batches(sampler, 1)
    full = BucketBatchSampler(plan, seed=3, drop_last=False)
    assigned = {i for i, a in enumerate(plan.assignment) if a is not None}
    assert {i for b in epoch_batches(full, 0) for i in b} == assigned


def test_bucket_sampler_resumes_mid_epoch():
    plan = mixed_plan([2, 1, 3])
    ref = BucketBatchSampler(plan, seed=1)
    reference = epoch_batches(ref, 0) + epoch_batches(ref, 1)
    run = BucketBatchSampler(plan, seed=1)
    it = iter(run)
    before = [next(it) for _ in range(9)]
    run.advance(9)
    state = json.loads(json.dumps(run.state_dict()))
    resumed = BucketBatchSampler(plan, seed=1)
    resumed.load_state_dict(state)
    assert before + list(resumed) + epoch_batches(resumed, 1) == reference
    other = BucketBatchSampler(BucketPlan(plan.buckets, plan.tokens, plan.batch_sizes,
                                          plan.assignment[::-1], 320), seed=1)
    with pytest.raises(InputError, match="assignment"):
        other.load_state_dict(state)


def test_two_ranks_together_equal_one_process():
    single = BucketBatchSampler(mixed_plan([4, 2, 6]), seed=5)
    ranks = [BucketBatchSampler(mixed_plan([2, 1, 3]), rank=r, world_size=2, seed=5) for r in (0, 1)]
    for epoch in range(2):
        glob, r0, r1 = (epoch_batches(s, epoch) for s in (single, *ranks))
        assert len(glob) == len(r0) == len(r1)
        assert [a + b for a, b in zip(r0, r1)] == glob
    # a 2-rank run resumed on one process carries on with the same global batches
    for s in ranks:
        s.set_epoch(0)
        s.position = 0
        s.advance(5)
    one = BucketBatchSampler(mixed_plan([4, 2, 6]), seed=5)
    one.load_state_dict(ranks[1].state_dict())
    assert list(one) == epoch_batches(single, 0)[5:]


def test_buckets_feed_the_dataset(tmp_path):
    specs = [("wide", 96, 48, "left"), ("tall", 48, 96, "up"), ("square", 64, 64, "right"),
             ("wide2", 96, 48, "down")]
    rows = []
    for name, w, h, direction in specs:
        shot = {"shape": "square", "color": "blue", "direction": direction, "background": "white",
                "start_frame": 0, "end_frame": 30}
        render_video(tmp_path / f"{name}.mp4", [shot], 24, h, w)
        rows.append({"path": f"{name}.mp4", "num_frames": 30, "fps": 24, "width": w, "height": h,
                     "text": name, "id": name})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = VideoClipDataset(tmp_path / "d.jsonl", num_frames=9, fps=8)
    # tokens: 3 latent frames x 2x4 (or 4x2) patches = 24, and 3 x 3x3 = 27; the budget fits two of 24
    plan = plan_buckets(ds.rows, [(9, 32, 64), (9, 64, 32), (9, 48, 48)], 48, COGVIDEOX, fps=ds.fps)
    assert plan.assignment == [0, 1, 2, 0] and plan.batch_sizes == [2, 2, 1]
    ds.set_sizes(plan.row_sizes)
    shapes = sorted(tuple(batch["video"].shape) for batch in
                    DataLoader(ds, batch_sampler=BucketBatchSampler(plan, seed=0, drop_last=False)))
    assert shapes == [(1, 9, 3, 48, 48), (2, 9, 3, 32, 64), (2, 9, 3, 64, 32)]
