"""Alpaca records from a source: a hub data set or a local .json / .jsonl / .parquet file, every record checked.

A record is {"instruction": str, "input": str, "output": str}. Hub ids go through `datasets`; local files
are read here line by line so that a bad record is reported with its file and line number.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alpaca_qlora import progress
from alpaca_qlora.errors import UserError

FIELDS = ("instruction", "input", "output")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


class DataError(UserError, ValueError):
    """A source that cannot be read, or a record that breaks the Alpaca schema."""


def is_local_source(source: str) -> bool:
    """A path (it exists, has a data file's suffix, or starts like one); anything else is a hub id."""
    return source.endswith(LOCAL_SUFFIXES) or source.startswith(("/", "./", "../", "~")) or Path(source).exists()


def load_records(source: str, *, split: str = "train") -> tuple[list[dict[str, Any]], list[str]]:
    """Load every record of `source` and a location label for each (for error messages).

    A path (see is_local_source) is read locally; anything else is a Hugging Face dataset id.
    """
    if is_local_source(source):
        path = Path(source).expanduser()
        check_local_file(path)
        try:
            if path.suffix == ".jsonl":
                rows, where = _read_jsonl_records(path)
            elif path.suffix == ".json":
                rows, where = _read_json_records(path)
            else:
                rows, where = _read_parquet_records(path)
        except PermissionError as error:
            raise DataError(f"data.source: {path} cannot be read ({error.strerror}); give this user read "
                            "permission on it") from None
        if not rows:
            raise DataError(f"{path}: the file holds no records; data.source must point to a non-empty "
                            "Alpaca-format file (objects with instruction, input, output)")
        return rows, where
    import datasets

    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as error:  # the hub raises many types; all mean the same thing to the user
        raise DataError(f"data.source: could not load Hugging Face dataset '{source}' (split '{split}'): "
                        f"{one_line_reason(error)}; check the id and data.split, or, offline, point data.source at a local "
                        ".json/.jsonl/.parquet file") from error
    rows = dataset.to_list()
    return rows, [f"{source}[{split}] row {i}" for i in range(len(rows))]


def check_local_file(path: Path) -> None:
    """Say what is really there: nothing, a directory, or a file of a type this reader does not know."""
    fix = "point data.source at a .json, .jsonl or .parquet file of instruction/input/output records"
    if path.is_dir():
        raise DataError(f"data.source: {path} is a directory, not a data file; {fix}")
    if not path.exists():
        raise DataError(f"data.source: {path} does not exist; {fix} (a relative path starts at the repository "
                        "root), or at a Hugging Face dataset id")
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"data.source: {path} is a {path.suffix or 'suffix-less'} file; {fix}")


def _read_parquet_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except pyarrow.ArrowException as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line_reason(error)}); rewrite it, e.g. with "
                        "pandas' to_parquet, or use .json / .jsonl") from None
    return rows, [f"{path} row {i}" for i in range(len(rows))]


def one_line_reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_jsonl_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read bytes line by line, so a decoding error is reported with its line and byte offset too."""
    rows, where, offset = [], [], 0
    with open(path, "rb") as handle, progress.bar(desc=f"sample: reading {path.name}", total=path.stat().st_size,
                                                 unit="B", unit_scale=True) as shown:
        for line_number, raw in enumerate(handle, start=1):
            shown.update(len(raw))
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
                        f"{error.pos} ({error.msg}); fix the JSON there") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, got a {type(rows).__name__}; make the top "
                        "level a list [{...}, ...], or write one record per line as .jsonl")
    return rows, [f"{path} record {i}" for i in range(len(rows))]


def validate_records(rows: list[Any], where: list[str]) -> list[dict[str, str]]:
    """Check every record; return them reduced to the three Alpaca fields.

    Raises on the first bad record, naming it, so that nothing is silently dropped.
    """
    if not rows:
        raise DataError("data.source: the source has no records; point data.source at a non-empty data set")
    clean = []
    for row, location in progress.bar(zip(rows, where), desc="sample: checking records", total=len(rows),
                                      unit="record", unit_scale=True):
        if not isinstance(row, dict):
            raise DataError(f"{location}: a record must be an object, got {type(row).__name__}; write it as "
                            '{"instruction": ..., "input": ..., "output": ...}')
        for field in ("instruction", "output"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{location}: field '{field}' must be a non-empty string, got {value!r}; fix "
                                "or remove that record")
        value = row.get("input", "")
        if value is None or not isinstance(value, str):
            raise DataError(f"{location}: field 'input' must be a string (may be empty), got {value!r}; write "
                            '"" for a record without input')
        clean.append({"instruction": row["instruction"], "input": value, "output": row["output"]})
    return clean
