"""DVC for datasets: publish a directory (`dvc add`, then `dvc push` to the default remote) and read
the version a `.dvc` file records."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from longvid.io import InputError

log = logging.getLogger(__name__)


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise RuntimeError(f"dvc {' '.join(args)} failed: {msg[-1] if msg else proc.returncode}")
    return proc


def has_default_remote() -> bool:
    return bool(dvc("remote", "default", check=False).stdout.strip())


def publish(path: Path, push: bool) -> Path:
    if not path.exists():
        raise InputError(f"{path}: nothing to publish (build it first)")
    dvc("add", str(path))
    dot_dvc = path.with_name(path.name + ".dvc")
    if push and has_default_remote():
        dvc("push", str(dot_dvc))
        log.info("pushed %s to the default DVC remote", path)
    elif push:
        log.warning("no default DVC remote configured (`dvc remote add -d NAME URL`); %s is only in the "
                    "local cache", path)
    log.info("wrote %s: commit it (and the .gitignore beside it) to git", dot_dvc)
    return dot_dvc


def dataset_version(path: Path) -> str | None:
    """The DVC hash `<path>.dvc` records for a versioned directory, else None."""
    dvc_file = Path(path).with_name(Path(path).name + ".dvc")
    if not dvc_file.exists():
        return None
    import yaml

    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    except yaml.YAMLError as e:
        raise InputError(f"{dvc_file}: invalid YAML ({' '.join(str(e).split())})") from None
    return next((o.get("md5") for o in outs if isinstance(o, dict) and o.get("md5")), None)


def publish_stage(cfg: dict, path: Path, push: bool) -> int:
    """The publish stage: `publish(path, push)`."""
    publish(path, push)
    return 0
