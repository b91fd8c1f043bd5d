"""Version a built dataset (or raw data) with DVC: `dvc add`, then `dvc push` to the default remote.

Writes `<path>.dvc` next to the directory; commit it to git so colleagues can `dvc pull` exactly this
version. Without a configured remote, the data is only added to the local DVC cache (a warning says
so). From then on the workflow uses the versioned dataset (see workflow/rules/dataset.smk).
"""

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


def add_arguments(p) -> None:
    p.add_argument("--path", required=True, type=Path, help="directory to version, e.g. data/datasets/shapes")
    p.add_argument("--push", action="store_true", help="push to the default DVC remote when one is configured")


def run(args) -> int:
    publish(args.path, args.push)
    return 0
