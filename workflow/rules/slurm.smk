# Under the Slurm executor, the plugin's sbatch, squeue, sacct, ... calls go through
# workflow/scripts/slurm-bin/ (longvid.slurm_retry: retries through a scheduler outage), and their
# retry lines into Snakemake's log. onstart runs only in the Snakemake that submits jobs: not in a dry
# run, not inside a job (jobs get --no-hooks), and the executor is known by then (not at parse time).
# Self-contained, so a test's own Snakefile can include it.
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from snakemake.logging import logger

SLURM_BIN = Path(workflow.current_basedir).parent / "scripts" / "slurm-bin"


def relay_slurm_retries(path):
    """Copy each line the wrappers append to `path` into Snakemake's log: the plugin keeps none of the
    stderr of a command that ends well, so a submission that waited out an outage would say nothing.
    """
    with open(path) as lines:
        partial = ""
        while True:
            partial += lines.readline()
            if partial.endswith("\n"):
                logger.warning(partial.rstrip("\n"))
                partial = ""
            else:
                time.sleep(1)


onstart:
    if getattr(workflow.executor_plugin, "name", None) == "slurm":
        retry_dir = tempfile.mkdtemp(
            prefix="slurm-retry-", dir=workflow.snakemake_tmp_dir
        )
        open(f"{retry_dir}/retries.log", "w").close()
        os.environ.update(
            LONGVID_SLURM_RETRY_DIR=retry_dir,
            LONGVID_SLURM_PYTHON=sys.executable,
            PATH=os.pathsep.join([str(SLURM_BIN), *os.get_exec_path()]),
        )
        # A first snapshot of `scontrol show config`, for an outage before the first status check
        # (the wrapper waits at most 3 s for slurmctld).
        subprocess.run(
            [SLURM_BIN / "scontrol", "show", "config"], capture_output=True
        )
        threading.Thread(
            target=relay_slurm_retries,
            args=(f"{retry_dir}/retries.log",),
            daemon=True,
        ).start()
