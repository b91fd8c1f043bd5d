#!/bin/sh
# What each command in workflow/scripts/slurm-bin/ (sbatch, squeue, ...) is: a link to this script, which
# hands Slurm's real command of that name to longvid.slurm_retry (retries through a scheduler outage).
# The workflow puts slurm-bin first on PATH under the Slurm executor (rules/slurm.smk), with
# LONGVID_SLURM_PYTHON set to the Python that runs Snakemake (it has longvid installed).
exec "${LONGVID_SLURM_PYTHON:-python3}" -m longvid.slurm_retry "$0" "$@"
