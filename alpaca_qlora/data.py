"""Alpaca records: loading a source, validating every record, seeded sampling, stable JSONL files.

A record is {"instruction": str, "input": str, "output": str}. Hub ids go through `datasets`; local files
are read here line by line so that a bad record is reported with its file and line number.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from alpaca_qlora.atomic import atomic_write_bytes

FIELDS = ("instruction", "input", "output")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """A source that cannot be read, or a record that breaks the Alpaca schema."""


def is_local_source(source: str) -> bool:
    return source.endswith(LOCAL_SUFFIXES) or Path(source).exists()


def load_records(source: str, *, split: str = "train") -> tuple[list[dict[str, Any]], list[str]]:
    """Load every record of `source` and a location label for each (for error messages).

    A path ending in .json/.jsonl/.parquet is read locally; anything else is a Hugging Face dataset id.
    """
    if is_local_source(source):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"data.source: local file {source} does not exist")
        if path.suffix == ".jsonl":
            rows, where = _read_jsonl_records(path)
        elif path.suffix == ".json":
            rows, where = _read_json_records(path)
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            where = [f"{path} row {i}" for i in range(len(rows))]
        else:
            raise DataError(f"data.source: {source} must end in one of {', '.join(LOCAL_SUFFIXES)}")
        if not rows:
            raise DataError(f"{path}: the file holds no records; data.source must point to a non-empty "
                            "Alpaca-format file (objects with instruction, input, output)")
        return rows, where
    import datasets

    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as error:  # the hub raises many types; all mean the same thing to the user
        raise DataError(f"data.source: could not load Hugging Face dataset '{source}' (split '{split}'): "
                        f"{error}. Offline? Use a local .json/.jsonl/.parquet file instead.") from error
    rows = dataset.to_list()
    return rows, [f"{source}[{split}] row {i}" for i in range(len(rows))]


def _read_jsonl_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read bytes line by line, so a decoding error is reported with its line and byte offset too."""
    rows, where, offset = [], [], 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{line_number}: not UTF-8 (byte offset {offset + error.start}: "
                                f"{error.reason}); re-encode the file as UTF-8") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line.rstrip("\r\n")))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not valid JSON at column {error.colno} ({error.msg}); "
                                "each line must be one complete JSON object") from None
            where.append(f"{path}:{line_number}")
    return rows, where


def _read_json_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte offset {error.start}: {error.reason}); "
                        "re-encode the file as UTF-8") from None
    if not text.strip():
        return [], []
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON at column {error.colno}, character offset "
                        f"{error.pos} ({error.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    return rows, [f"{path} record {i}" for i in range(len(rows))]


def validate_records(rows: list[Any], where: list[str]) -> list[dict[str, str]]:
    """Check every record; return them reduced to the three Alpaca fields.

    Raises on the first bad record, naming it, so that nothing is silently dropped.
    """
    if not rows:
        raise DataError("data.source: the source has no records")
    clean = []
    for row, location in zip(rows, where):
        if not isinstance(row, dict):
            raise DataError(f"{location}: a record must be an object, got {type(row).__name__}")
        for field in ("instruction", "output"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{location}: field '{field}' must be a non-empty string, got {value!r}")
        value = row.get("input", "")
        if value is None or not isinstance(value, str):
            raise DataError(f"{location}: field 'input' must be a string (may be empty), got {value!r}")
        clean.append({"instruction": row["instruction"], "input": value, "output": row["output"]})
    return clean


def find_duplicates(records: list[dict[str, str]], where: list[str]) -> list[tuple[str, str]]:
    """(location of a repeat, location of its first occurrence) for every exact repeat of a record.

    Duplicates are kept, not dropped: removing them would change which records a seed samples. The sample
    stage warns and counts them in data/sampled/stats.json, so a user can clean the source if they matter.
    """
    first_seen: dict[str, str] = {}
    repeats = []
    for record, location in zip(records, where):
        key = canonical_json(record)
        if key in first_seen:
            repeats.append((location, first_seen[key]))
        else:
            first_seen[key] = location
    return repeats


def fingerprint(records: Iterable[dict[str, Any]]) -> str:
    """sha256 over the canonical JSON of the records, in order: same content, same hash, any machine."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(canonical_json(record).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def sample_indices(total: int, *, fraction: float, eval_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded draw of a training sample of `fraction` x total, and `eval_size` held-out indices.

    One permutation from numpy's PCG64 generator (stable across platforms and numpy versions): its first
    round(fraction x total) indices are the training sample, the next `eval_size` the held-out set, so
    the two never overlap and the training set is exactly the requested fraction.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"data.fraction must be in (0, 1], got {fraction}")
    if eval_size < 1:
        raise DataError(f"data.eval_size must be at least 1, got {eval_size}")
    train_size = max(1, round(fraction * total))
    if train_size + eval_size > total:
        raise DataError(f"data.fraction={fraction} leaves {total - train_size} of {total} records outside the "
                        f"sample, fewer than data.eval_size={eval_size}; lower one of them")
    order = np.random.Generator(np.random.PCG64(seed)).permutation(total).tolist()
    return order[:train_size], order[train_size:train_size + eval_size]


def canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as canonical JSON lines (sorted keys, "\\n" endings): byte-identical for equal rows.

    Written to a temporary file and renamed, so a killed run never leaves a truncated file behind.
    """
    lines = [canonical_json(row) + "\n" for row in rows]
    atomic_write_bytes(Path(path), "".join(lines).encode("utf-8"))
    return len(lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows, _ = _read_jsonl_records(Path(path))
    return rows


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, value: Any) -> None:
    """Stable, human-readable JSON (sorted keys, trailing newline) for stats, metrics and metadata."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))
