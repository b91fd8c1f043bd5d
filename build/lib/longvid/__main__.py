"""`python -m longvid`: what the workflow's rules run (the Python that runs Snakemake, so no PATH
lookup of a `longvid` script is needed)."""

import sys

from longvid.cli import main

sys.exit(main())
