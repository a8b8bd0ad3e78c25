"""Drive real ``git`` and ``dvc`` command lines in a repository, and describe what they left.

Everything takes the repository path, so the same helpers work on the real
offline-profile workspace and on the small stand-in project.
"""

from __future__ import annotations

from pathlib import Path

from tests.dvc_cli import (ADAPTER, DVC, EXPECTED_OUTPUTS, Result, command_env, copy_repo,  # noqa: F401
                           digest_outputs, digest_tree, dvc, git, lock_out_md5, lock_outputs, read_lock, run)

ADAPTER_WEIGHTS = "models/adapter/adapter_model.safetensors"

def make_origin(repo: Path, bare: Path) -> None:
    """Create a bare git repository at ``bare`` from ``repo`` and make it ``origin``."""
    run(["git", "clone", "--quiet", "--bare", str(repo), str(bare)], repo.parent)
    existing = git(repo, "remote").output.split()
    if "origin" in existing:
        git(repo, "remote", "set-url", "origin", str(bare))
    else:
        git(repo, "remote", "add", "origin", str(bare))
    git(repo, "fetch", "--quiet", "origin")


def clone(origin: Path, dest: Path) -> Path:
    run(["git", "clone", "--quiet", str(origin), str(dest)], Path(dest).parent)
    return Path(dest)


def gpu_box(source: Path, scratch: Path) -> Path:
    """The trainer's clone: a copy of ``source`` at scratch/gpu-box, pushing to a bare scratch/origin.git."""
    repo = copy_repo(source, Path(scratch) / "gpu-box")
    make_origin(repo, Path(scratch) / "origin.git")
    return repo


def colleague_clone(scratch: Path) -> Path:
    """A colleague's fresh ``git clone`` of the scratch/origin.git that :func:`gpu_box` made."""
    return clone(Path(scratch) / "origin.git", Path(scratch) / "colleague")


def dvc_cache_files(repo: Path) -> list[Path]:
    cache = Path(repo) / ".dvc" / "cache" / "files"
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def dir_manifest_entry(repo: Path, rel_file: str) -> str:
    """The md5 DVC recorded for ``rel_file`` inside a tracked directory output.

    Read from the directory's ``.dir`` manifest in the local cache, the same
    object DVC pushes, so a test can find the file's object on a remote.
    """
    import json

    lock = read_lock(repo)
    outs = {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }
    for parent in Path(rel_file).parents:
        dir_md5 = outs.get(parent.as_posix())
        if dir_md5 is None:
            continue
        manifest = Path(repo) / ".dvc" / "cache" / object_relpath(dir_md5)
        relpath = Path(rel_file).relative_to(parent).as_posix()
        for entry in json.loads(manifest.read_text()):
            if entry["relpath"] == relpath:
                return entry["md5"]
        raise KeyError(f"{relpath} is not listed in {manifest}")
    raise KeyError(f"no directory output in {repo}/dvc.lock contains {rel_file}")


def object_relpath(md5: str) -> str:
    """Where DVC 3 stores an object, relative to the cache or remote root."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def pushed_count(output: str) -> int:
    """N from DVC's "N files pushed" ("Everything is up to date." counts as 0)."""
    for line in output.splitlines():
        words = line.split()
        if line.strip().endswith(("file pushed", "files pushed")):
            return int(words[0])
    if "Everything is up to date." in output:
        return 0
    raise AssertionError(f"no push summary in:\n{output}")
