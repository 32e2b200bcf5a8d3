"""`python -P -m broker`: the broker as a process of its own (see broker/main.py)."""

import sys

from broker.main import main

sys.exit(main(sys.argv[1:]))
