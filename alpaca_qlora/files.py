"""Files the pipeline writes: all-or-nothing, stable JSON / JSONL, and their sha256.

A stage's folder or file appears complete, or not at all.
A stage killed or failing half way (a bad record, a full disk, a preempted machine) must never leave a
half-written output that looks valid to the next stage or to `dvc commit`. Everything is written under a
temporary name beside its target, on the same filesystem, and renamed into place only once complete: a
rename is atomic on POSIX. A leftover temporary from a killed run is removed by the next run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def staging_path(target: Path) -> Path:
    """The temporary sibling of `target`: hidden, and named after it, so a leftover is easy to trace."""
    return target.parent / f".{target.name}.partial"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `target`, on any error it is removed.

        with atomic_directory(Path("models/adapter")) as staging:
            model.save_pretrained(staging)

    An existing `target` (a run outside DVC, which otherwise deletes outputs first) is kept until the new
    folder is complete, then swapped out.
    """
    target = Path(target)
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        _fsync_tree(staging)
        if target.exists():
            old = target.parent / f".{target.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = staging_path(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` so that the rename never publishes data still in the page cache."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def canonical_json(value: Any) -> str:
    """One line, sorted keys, no spaces: equal values give equal bytes on any machine."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as canonical JSON lines ("\\n" endings), atomically: byte-identical for equal rows."""
    lines = [canonical_json(row) + "\n" for row in rows]
    atomic_write_bytes(Path(path), "".join(lines).encode("utf-8"))
    return len(lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file this pipeline wrote (user data goes through data.records, which names bad lines)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json(path: Path, value: Any) -> None:
    """Stable, human-readable JSON (sorted keys, trailing newline) for stats, metrics and metadata."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
