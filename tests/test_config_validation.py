"""Config resolution fails on a misspelt or invalid key, naming the file and the key: per source
type, in model.overrides, and only for the dataset that is asked for."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longvid import config
from longvid.ingest.fetch import fetch
from longvid.io import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((config.SCHEMAS / "dataset.schema.yaml").read_text())

# The fewest keys that make a valid section of each type, and one key each adapter really reads.
MINIMAL = {
    "synthetic": ({"type": "synthetic"}, "num_videos"),
    "local": ({"type": "local", "path": "data/incoming"}, "recursive"),
    "urls": ({"type": "urls", "list": "urls.txt"}, "timeout_s"),
    "pixabay": ({"type": "pixabay", "query": "nature"}, "max_videos"),
    "annotations": ({"type": "annotations", "format": "openvid", "path": "a.csv", "video_root": "v"}, "limit"),
}


def branch(kind: str) -> dict:
    """The schema's keys of one source type."""
    (then,) = [b["then"] for b in SCHEMA["properties"]["source"]["allOf"] if b["if"]["properties"]["type"]["const"] == kind]
    return then["properties"]


def write_dataset(root: Path, name: str, source: dict, **sections) -> None:
    (root / "config" / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "config" / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump({"source": source, **sections}))


def test_every_source_type_is_in_the_schema():
    from longvid.ingest.fetch import ADAPTERS

    assert set(MINIMAL) == set(ADAPTERS) == set(SCHEMA["properties"]["source"]["properties"]["type"]["enum"])


@pytest.mark.parametrize("kind", MINIMAL)
def test_a_typo_names_the_key_and_the_file(tmp_path, kind):
    source, key = MINIMAL[kind]
    typo = key[:-2] + key[-1] + key[-2]  # num_videos -> num_vidoes
    write_dataset(tmp_path, "x", {**source, typo: 3})
    with pytest.raises(InputError) as e:
        config.dataset("x", root=tmp_path)
    assert str(e.value) == f"config/datasets/x.yaml: source.{typo}: unknown key (did you mean {key}?)"
    # a key of another type is as unknown (the branches do not leak into each other)
    other = "query" if kind != "pixabay" else "num_videos"
    write_dataset(tmp_path, "x", source)
    with pytest.raises(InputError, match=rf"^config/datasets/x\.yaml: source\.{other}: unknown key"):
        config.dataset("x", {"source": {other: 1}}, tmp_path)


@pytest.mark.parametrize("kind", MINIMAL)
def test_a_valid_section_resolves_with_its_types_defaults(tmp_path, kind):
    source, _ = MINIMAL[kind]
    write_dataset(tmp_path, "x", source)
    got = config.dataset("x", root=tmp_path)["source"]
    keys = branch(kind)
    defaults = {k: v["default"] for k, v in keys.items() if "default" in v}
    assert defaults, kind
    assert got == {**defaults, **source}
    assert set(got) <= set(keys)
    assert config.source(got) == got  # what adapters do to a resolved section changes nothing


def test_defaults_are_the_ones_adapters_relied_on():
    assert config.source({"type": "synthetic"}) == {"type": "synthetic", "num_videos": 12, "shots_per_video": 3,
                                                    "shot_seconds": [6.5, 8.0], "fps": 24, "width": 160,
                                                    "height": 120, "object_size": 0.125, "seed": 0}
    urls = config.source({"type": "urls", "urls": ["http://x/a.mp4"]})
    assert (urls["workers"], urls["retries"], urls["timeout_s"], urls["backoff_s"]) == (8, 4, 60, 1.0)
    assert config.source({"type": "local", "path": "p"})["workers"] == 4


def test_missing_and_bad_values_name_the_key(tmp_path):
    write_dataset(tmp_path, "x", {"type": "annotations", "format": "openvid", "path": "a.csv"})
    with pytest.raises(InputError, match=r"^config/datasets/x\.yaml: source\.video_root: required \(the folder"):
        config.dataset("x", root=tmp_path)
    cases = [({"type": "local", "path": "p", "captions": "yes"}, r"source\.captions: 'yes' is not one of"),
             ({"type": "synthetic", "width": 161}, r"source\.width: 161 is not a multiple of 2"),
             ({"type": "pixabay", "per_page": 500}, r"source\.per_page: 500 is greater than the maximum"),
             ({"type": "pixabay", "query": ["ok", "x" * 101]}, r"source\.query\.1: 'x+' is too long"),
             ({"type": "folder"}, r"source\.type: 'folder' is not one of")]
    for source, err in cases:
        write_dataset(tmp_path, "x", source)
        with pytest.raises(InputError, match=rf"^config/datasets/x\.yaml: {err}"):
            config.dataset("x", root=tmp_path)


def test_adapters_called_directly_get_the_same_check(tmp_path):
    with pytest.raises(InputError, match=r"^source\.num_vidoes: unknown key"):
        fetch({"type": "synthetic", "num_vidoes": 3}, tmp_path)
    with pytest.raises(InputError, match=r"^source\.list: give `list` or `urls`, not both"):
        fetch({"type": "urls", "list": "a.txt", "urls": ["http://x/a.mp4"]}, tmp_path)


def test_an_unrelated_broken_dataset_file_does_not_matter(tmp_path):
    write_dataset(tmp_path, "good", {"type": "synthetic"})
    write_dataset(tmp_path, "broken", {"type": "synthetic"}, filter={"min_frames": 48})
    assert config.dataset("good", root=tmp_path)["source"]["num_videos"] == 12
    with pytest.raises(InputError, match=r"broken\.yaml: filter\.min_frames: 48 is not 8N\+1"):
        config.dataset("broken", root=tmp_path)
    # no .dvc file: answered without reading the (broken) config
    assert config.dvc_tracked("broken", root=tmp_path) is False
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "good.dvc").write_text("outs: []\n")
    assert config.dvc_tracked("good", root=tmp_path) is True
    assert config.dvc_tracked("good", {"dvc": {"pull": False}}, tmp_path) is False


EXPERIMENT = "config/experiments/tiny.yaml"


@pytest.mark.parametrize("overrides, err", [
    ({"model": {"overrides": {"attn_windw": 4}}}, r"model\.overrides\.attn_windw: unknown key \(did you mean attn_window\?\)"),
    ({"model": {"overrides": {"attn_window": 5}}}, r"model\.overrides\.attn_window=5: must divide the latent frames"),
    ({"model": {"overrides": {"attn_window": "4"}}}, r"model\.overrides\.attn_window='4': expected int"),
    ({"model": {"overrides": {"num_heads": 5}}}, r"model\.overrides\.num_heads=5: must divide model\.hidden_size=64"),
    ({"model": {"overrides": {"num_frames": 17}}}, r"model\.overrides\.num_frames: derived from data\.num_frames"),
    ({"model": {"overrides": {"text_length": 64}}}, r"model\.overrides\.text_length: derived from model\.text\.max_length"),
    # the windows of 4 that fit 49 frames (13 latent) do not fit 57 (15): the data decides
    ({"data": {"num_frames": 57}}, r"model\.overrides\.attn_window=4: .*data\.num_frames=57 gives 15 latent frames"),
    ({"data": {"height": 68}}, r"data\.height/width: 68x64 is not a multiple of the VAE's 8x"),
    ({"model": {"text": {"type": "t5", "path": "t5"}}}, r"model\.text\.tokenizer=words: only the tiny encoder"),
    ({"data": {"buckets": [[49, 64, 64], [25, 64, 64]], "max_tokens": 4096}},
     r"data\.buckets\[1\] \(25 frames\): model\.overrides\.attn_window=4: must divide"),
])
def test_model_overrides_are_checked_at_resolve_time(overrides, err):
    with pytest.raises(InputError, match=rf"^{EXPERIMENT}: {err}"):
        config.experiment("tiny", overrides, REPO)


def test_the_shipped_experiments_resolve():
    for name in ("tiny", "5b_sft"):
        config.experiment(name, None, REPO)
    config.experiment("tiny", {"data": {"buckets": [[49, 64, 64], [17, 64, 96]], "max_tokens": 4096}}, REPO)


def test_resolving_an_experiment_imports_no_torch():
    code = ("import sys; from longvid import config; config.experiment('tiny', None, config.Path('.')); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
