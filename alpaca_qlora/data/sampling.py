"""Which records train and which are held out: a seeded split, plus the duplicate count and fingerprints.

Same source + same seed = the same split, byte for byte, on any machine.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np

from alpaca_qlora import progress
from alpaca_qlora.data.records import DataError
from alpaca_qlora.files import canonical_json


def find_duplicates(records: list[dict[str, str]], where: list[str]) -> list[tuple[str, str]]:
    """(location of a repeat, location of its first occurrence) for every exact repeat of a record.

    Duplicates are kept, not dropped: removing them would change which records a seed samples. The sample
    stage warns and counts them in data/sampled/stats.json, so a user can clean the source if they matter.
    """
    first_seen: dict[str, str] = {}
    repeats = []
    for record, location in progress.bar(zip(records, where), desc="sample: finding duplicates", total=len(records),
                                         unit="record", unit_scale=True):
        key = canonical_json(record)
        if key in first_seen:
            repeats.append((location, first_seen[key]))
        else:
            first_seen[key] = location
    return repeats


def fingerprint(records: Iterable[dict[str, Any]]) -> str:
    """sha256 over the canonical JSON of the records, in order: same content, same hash, any machine."""
    digest = hashlib.sha256()
    for record in progress.bar(records, desc="sample: fingerprinting", unit="record", unit_scale=True):
        digest.update(canonical_json(record).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def sample_indices(total: int, *, fraction: float, eval_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded draw of a training sample of `fraction` x total, and `eval_size` held-out indices.

    One permutation from numpy's PCG64 generator (stable across platforms and numpy versions): its first
    round(fraction x total) indices are the training sample, the next `eval_size` the held-out set, so
    the two never overlap and the training set is exactly the requested fraction. The bounds of `fraction`
    and `eval_size` are params.py's; what is checked here depends on the source's size.
    """
    train_size = max(1, round(fraction * total))
    if train_size + eval_size > total:
        raise DataError(f"params.yaml: data.fraction={fraction} leaves {total - train_size} of {total} records "
                        f"outside the sample, fewer than data.eval_size={eval_size}; lower one of them")
    order = np.random.Generator(np.random.PCG64(seed)).permutation(total).tolist()
    return order[:train_size], order[train_size:train_size + eval_size]
