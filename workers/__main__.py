"""`python -m workers`: a worker pool (workers/launch.py, workers/args.py)."""

import sys

from workers.launch import run

run(sys.argv[1:])
