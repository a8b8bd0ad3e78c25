"""Drive real ``git`` and ``dvc`` command lines in a repository, and describe what they left.

Everything takes the repository path, so the same helpers work on the real
offline-profile workspace and on the small stand-in project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alpaca_qlora.files import file_sha256

#: Outputs the sharing tests rely on by name (the full list is read from each repo's dvc.lock).
EXPECTED_OUTPUTS = ("data/sampled", "data/formatted", "models/adapter", "reports/metrics.json")
ADAPTER = "models/adapter"
ADAPTER_WEIGHTS = "models/adapter/adapter_model.safetensors"

DVC = str(Path(sys.executable).with_name("dvc"))

#: Environment for every git and dvc command: no usage analytics (they try the
#: network), no prompts, a fixed git identity, no user-level config leaking in.
BASE_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Remote Tests",
    "GIT_AUTHOR_EMAIL": "remote-tests@example.invalid",
    "GIT_COMMITTER_NAME": "Remote Tests",
    "GIT_COMMITTER_EMAIL": "remote-tests@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    # DVC's tables wrap at the terminal width; keep each row on one line.
    "COLUMNS": "1000",
}


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Credentials must come from the remote's --local config in these tests, never
    # from whatever the machine running them has.
    for key in list(env):
        if key.startswith("AWS_") and key != "AWS_CA_BUNDLE":
            del env[key]
    env.update(BASE_ENV)
    # Stage commands say `python`: make it this interpreter, with the pipeline's packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    output: str  # stdout and stderr together, in order
    seconds: float

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}  (exit {self.returncode}, {self.seconds:.1f}s)\n{self.output}"
        )


def run(args: list[str], cwd: Path, *, timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None, preexec_fn=None) -> Result:
    """Run a command, return its exit code and merged output.

    ``check`` raises with the whole output when the command fails, so a test
    failure shows what the tool said.
    """
    start = time.monotonic()
    proc = subprocess.run(
        args, cwd=cwd, env=command_env(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        preexec_fn=preexec_fn,
    )
    result = Result(list(args), proc.returncode, proc.stdout, time.monotonic() - start)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed in {cwd}:\n{result}")
    return result


def dvc(repo: Path, *args: str, **kwargs) -> Result:
    return run([DVC, *args], repo, **kwargs)


def git(repo: Path, *args: str, **kwargs) -> Result:
    return run(["git", *args], repo, **kwargs)


sha256 = file_sha256


def digest_tree(repo: Path, rel: str) -> dict[str, str]:
    """``{relative file path: sha256}`` for a file or every file under a directory."""
    root = Path(repo) / rel
    if root.is_file():
        return {rel: sha256(root)}
    if not root.exists():
        return {}
    return {
        path.relative_to(repo).as_posix(): sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _read_lock(repo: Path) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load((Path(repo) / "dvc.lock").read_text())


def lock_outputs(repo: Path) -> list[str]:
    """Every output path recorded in ``repo``'s dvc.lock (the files DVC pushes and pulls)."""
    lock = _read_lock(repo)
    return sorted(out["path"] for stage in lock["stages"].values() for out in stage.get("outs", []))


def lock_out_md5(repo: Path, rel: str) -> str:
    """The md5 (``....dir`` for a directory) that ``repo``'s dvc.lock records for the output ``rel``."""
    lock = _read_lock(repo)
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == rel:
                return out["md5"]
    raise KeyError(f"{rel} is not an output in {repo}/dvc.lock")


def digest_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file of every output in ``repo``'s dvc.lock, present or not."""
    digests: dict[str, str] = {}
    for rel in lock_outputs(repo):
        digests.update(digest_tree(repo, rel))
    return digests


def copy_repo(src: Path, dest: Path) -> Path:
    """Copy a whole repository (work tree, .git, .dvc/cache) to ``dest``.

    DVC's link-type default (reflink, else copy) means the copy shares nothing
    with ``src``.
    """
    shutil.copytree(src, dest, symlinks=True)
    # The copied state DB describes src's inodes; let DVC rebuild it.
    shutil.rmtree(Path(dest) / ".dvc" / "tmp", ignore_errors=True)
    return Path(dest)


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

    lock = _read_lock(repo)
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
