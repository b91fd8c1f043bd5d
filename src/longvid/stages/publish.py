"""Version a built dataset (or raw data) with DVC: `dvc add`, then `dvc push` to the default remote.

Writes `<path>.dvc` next to the directory; commit it to git so colleagues can `dvc pull` exactly this
version. Without a configured remote the data is only added to the local DVC cache (a warning says
so). From then on the workflow uses the versioned dataset (workflow/rules/dataset.smk).
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--path", required=True, type=Path, help="directory to version, e.g. data/datasets/shapes")
    p.add_argument("--push", action="store_true", help="push to the default DVC remote when one is configured")


def run(args) -> int:
    from longvid.dvc_publish import publish

    publish(args.path, args.push)
    return 0
