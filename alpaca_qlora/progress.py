"""Progress for a person waiting: tqdm bars on a terminal, and one summary line at the end of each stage.

Bars follow tqdm's own rule (`disable=None`: drawn only when stderr, where they go, is a terminal), and
are off under CI (the `CI` variable that CI services set), so logs, `dvc repro` in CI and the tests get
only the summary lines. TQDM_* variables (e.g. TQDM_MININTERVAL=5) tune them as they tune any tqdm bar.
The libraries' own bars (weights loading, datasets' map) follow the same rule: this module is imported as
a stage or command starts, before them, and switches theirs off through their variables when no one watches.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, TypeVar

STARTED = time.perf_counter()  # this module is imported as a stage or command starts
Item = TypeVar("Item")


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def bars_shown() -> bool:
    """What tqdm decides with disable=None (a terminal on stderr), and not under CI: for libraries' own
    progress switches (peft's `progressbar`, the Trainer's `disable_tqdm`)."""
    return not under_ci() and sys.stderr.isatty()


def quiet_library_bars_unless_watched() -> None:
    """transformers, datasets and huggingface_hub read these when imported; a variable already set wins."""
    if not bars_shown():
        for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(variable, "1")


quiet_library_bars_unless_watched()


def bar(iterable: Iterable[Item] | None = None, *, desc: str, total: float | None = None, unit: str = "it",
        **options):
    """A tqdm bar over `iterable` (or a manual one: call .update(n)), cleared when done: the summary says it."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=True if under_ci() else None, **options)


def note(text: str) -> None:
    """A step of a long command ("loading the base model"), for a person watching; quiet where bars are."""
    if bars_shown():
        print(text, file=sys.stderr, flush=True)


def summary(text: str) -> str:
    """`text` with the wall time since the stage or command started: the last line it prints."""
    return f"{text} ({time.perf_counter() - STARTED:.1f}s)"
