"""Every change this project makes to another library, in one place.

Each patch is a context manager: entering it applies the patch where it applies and yields one line
saying what it did (recorded in the adapter's metadata.json); leaving it puts the library back. Each one
leans on a library's internals by name, so tests/test_patches.py checks those internals are still there:
an upgrade that moves them fails CI instead of silently changing what runs.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator


@contextmanager
def for_training(backend: str) -> Iterator[dict[str, str]]:
    """The patches training with `backend` needs, applied for the duration; yields {patch: what it did}."""
    from alpaca_qlora.patches import packed_attention, trl_cpu_loss

    with ExitStack() as stack:
        if backend == "unsloth":
            yield {"packed_attention": stack.enter_context(packed_attention.applied())}
        else:
            yield {"trl_cpu_loss": stack.enter_context(trl_cpu_loss.applied())}
