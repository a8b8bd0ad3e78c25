"""Ending a stage's process without the interpreter's teardown of torch and transformers.

A stage that imported torch, transformers or Unsloth spends seconds after its last line in Python's
finalization (tearing down thousands of modules and their C++ state): 3.3 s for the format stage on the
shared 2-core CPU here, after its outputs were complete. DVC waits for the process to exit before it
records the outputs, so those seconds are the user's. `exit_now` runs what must run at exit (the atexit
handlers: logging's flush, Unsloth's compile-cache save, W&B's finish, weakref finalizers), flushes the
standard streams and ends the process there. Only after a stage has written every output (files.py makes
them durable with fsync), never on an error path, whose traceback and exit status stay Python's.
"""
from __future__ import annotations

import atexit
import os
import sys


def exit_now(status: int = 0) -> None:
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to lose
            pass
    os._exit(status)
