"""The project's shape, checked: short modules, stages that never import each other, and every
stage runnable by name with --help."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from longvid.cli import STAGES, TOOLS

SRC = Path(__file__).resolve().parents[1] / "src" / "longvid"

# Stage code by family: a module of one family may import the shared libraries (io, config, layout,
# video, runtime, dist, models, diffusion, dataset's loader/buckets/sampler, ...) and its own family,
# never another family's modules. Files and schemas between stages are the contract, not imports.
FAMILIES = {
    "ingest": ["longvid.ingest"],
    "caption": ["longvid.caption"],
    "dataset": ["longvid.dataset.build", "longvid.dataset.stats"],
    "encode": ["longvid.encode"],
    "train": ["longvid.train"],
    "sample": ["longvid.sample"],
    "evaluate": ["longvid.evaluate"],
    "report": ["longvid.report"],
}
# The entry points (longvid.cli, longvid.stages: the stage table and the tools) may call any stage.
ENTRY_POINTS = ("longvid.cli", "longvid.stages")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def family_of(module: str) -> str | None:
    for family, prefixes in FAMILIES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return family
    return None


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, lazy (function-level) imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from longvid import sample`
    return {m for m in found if m.startswith("longvid")}


MODULES = sorted(SRC.rglob("*.py"))


def test_no_stage_imports_another_stages_module():
    crossings = []
    for path in MODULES:
        mine = family_of(module_name(path))
        for imported in imports_of(path):
            theirs = family_of(imported)
            if theirs is not None and mine is not None and theirs != mine:
                crossings.append(f"{module_name(path)} ({mine}) imports {imported} ({theirs})")
            if theirs is not None and mine is None and not module_name(path).startswith(ENTRY_POINTS):
                crossings.append(f"shared module {module_name(path)} imports stage module {imported}")
    assert not crossings, "\n".join(crossings)


def test_the_import_check_sees_a_crossing():
    assert family_of("longvid.sample") == "sample" and family_of("longvid.sample_index") is None
    assert family_of("longvid.evaluate.evaluation") == "evaluate" and family_of("longvid.ingest.split") == "ingest"


def test_every_stage_entry_exists_in_its_library():
    import importlib

    from longvid.stages import STAGES as TABLE

    for stage in TABLE:
        module, function = stage.entry.split(":")
        assert callable(getattr(importlib.import_module(module), function)), stage.entry


def test_no_module_over_400_lines():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


@pytest.mark.parametrize("name", STAGES + TOOLS)
def test_every_stage_has_help(name):
    proc = subprocess.run([sys.executable, "-m", "longvid", name, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and f"usage: longvid {name}" in proc.stdout, proc.stderr
    if name not in TOOLS and name != "publish":  # every stage runs by name: --dataset/--experiment NAME
        assert "--dataset NAME" in proc.stdout or "--experiment NAME" in proc.stdout


def test_stages_resolve_config_from_any_directory(tmp_path):
    """The schemas ship inside the package: validation needs no checkout as the working directory."""
    configfile = SRC.parents[1] / "config" / "config.yaml"
    proc = subprocess.run([sys.executable, "-m", "longvid", "config", "--dataset", "shapes", "--stage", "filter",
                           "--configfile", str(configfile)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"min_frames": 49' in proc.stdout and '"stage_version"' in proc.stdout


@pytest.mark.slow
def test_the_wheel_carries_the_schemas(tmp_path):
    import zipfile

    from conftest import copy_repo

    source = copy_repo(tmp_path / "src")  # a build writes build/ and *.egg-info beside the sources
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("longvid-*.whl"))).namelist()
    assert {f"longvid/schemas/{k}.schema.yaml" for k in ("config", "dataset", "experiment")} <= set(names)
