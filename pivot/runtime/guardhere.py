"""Imported by the workers' forkserver after its preloads (pivot/runtime/preload.py
`worker_context`): the bytecode guard (pivot/runtime/freshcode.py) for the folder it runs
in, the pool's project root. Every loader and worker forked from it then has the guard
installed already: installing it looks again at every folder the server's imports cached
(~160 with scikit-learn), 3.5-4.5 ms in each fork on a code edit's way to its stage. A
fork whose project root is elsewhere installs its own as before.
"""

import os

from pivot.runtime.freshcode import guard_project_bytecode

guard_project_bytecode(os.getcwd())
