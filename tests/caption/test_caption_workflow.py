"""A folder of videos nobody captioned becomes a training dataset through Snakemake: `local` source,
`caption.backend: openai` against a real loopback chat-completions server (the VLM test double)."""

from __future__ import annotations

import json

import pytest
from conftest import snakemake
from vlm_server import VLMServer

from longvid.shapes import caption_of, render_video

pytestmark = pytest.mark.slow

SHOTS = [{"shape": "circle", "color": "red", "direction": "left", "background": "black"},
         {"shape": "square", "color": "blue", "direction": "up", "background": "white"},
         {"shape": "triangle", "color": "green", "direction": "right", "background": "gray"}]


def test_uncaptioned_folder_to_dataset_with_a_vlm_endpoint(repo_copy, tmp_path):
    videos = tmp_path / "my videos"
    videos.mkdir()
    for i, shot in enumerate(SHOTS):
        render_video(videos / f"clip{i}.mp4", [{**shot, "start_frame": 0, "end_frame": 56}], 8.0, 96, 128)
    with VLMServer(fail_rate=0.3, boilerplate_rate=0.3, seed=1) as server:
        (repo_copy / "config/datasets/mine.yaml").write_text(json.dumps({
            "source": {"type": "local", "path": str(videos)},
            "split": {"detector": "none", "cut": False},
            "caption": {"backend": "openai", "endpoints": [server.url], "backoff": 0.05},
            "dataset": {"val_fraction": 0.0}}))
        snakemake(repo_copy, "data/datasets/mine/train.jsonl")
        requests = server.stats["chat"]
        rows = [json.loads(line) for line in (repo_copy / "data/datasets/mine/train.jsonl").read_text().splitlines()]
        assert len(rows) == len(SHOTS)
        # each clip carries the caption of its own pixels, boilerplate openings cleaned off
        expected = {caption_of(s) for s in SHOTS}
        assert {r["text"].split(",")[0].lower() for r in rows} == expected
        assert not any(r["text"].lower().startswith("the video") for r in rows)
        shard = [json.loads(line) for line in
                 (repo_copy / "data/shards/mine/s00000/captioned.jsonl").read_text().splitlines()]
        assert {r["caption_status"] for r in shard} == {"ok"} and all(r["caption_attempts"] >= 1 for r in shard)
        assert requests > len(SHOTS)  # the injected 500s were retried

        # a rerun of the stage (here: after its output is gone) asks the server for nothing: the cache
        (repo_copy / "data/shards/mine/s00000/captioned.jsonl").unlink()
        snakemake(repo_copy, "data/datasets/mine/train.jsonl")
        assert server.stats["chat"] == requests
