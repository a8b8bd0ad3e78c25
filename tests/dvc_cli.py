"""The one way tests drive the real `dvc` and `git` command lines, and read what they left in dvc.lock.

tests/conftest.py (the pipeline tests) and tests/remotes/ (the sharing tests) both use it.
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

DVC = str(Path(sys.executable).with_name("dvc"))
ADAPTER = "models/adapter"
#: Outputs the sharing tests rely on by name (the full list is read from each repo's dvc.lock).
EXPECTED_OUTPUTS = ("data/sampled", "data/formatted", ADAPTER, "reports/metrics.json")

#: Every command runs with: this interpreter's venv first on PATH (stage commands say `python`), no usage
#: analytics and no hub (both try the network), W&B off unless a test turns it on, no prompts, a fixed git
#: identity, and DVC's tables on one line each.
BASE_ENV = {
    "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false", "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Pipeline Tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "Pipeline Tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid", "COLUMNS": "1000",
}


def command_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of every command; `extra` adds variables, and a None value removes one."""
    env = dict(os.environ)
    # Remote credentials must come from a repo's --local config in these tests, never from the machine.
    for key in [key for key in env if key.startswith("AWS_") and key != "AWS_CA_BUNDLE"]:
        del env[key]
    env.update(BASE_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name, value in (extra or {}).items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    output: str  # stdout and stderr together, in order
    seconds: float

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}  (exit {self.returncode}, {self.seconds:.1f}s)\n{self.output}"


def run(args: list[str], cwd: Path, *, timeout: float = 900, check: bool = True,
        env: dict[str, str | None] | None = None, preexec_fn=None) -> Result:
    """Run a command; with `check`, a failure raises with the whole output, so a test shows what the tool said."""
    start = time.monotonic()
    proc = subprocess.run(args, cwd=cwd, env=command_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, preexec_fn=preexec_fn)
    result = Result(list(args), proc.returncode, proc.stdout, time.monotonic() - start)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed in {cwd}:\n{result}")
    return result


def dvc(repo: Path, *args: str, **kwargs) -> Result:
    return run([DVC, *args], repo, **kwargs)


def git(repo: Path, *args: str, **kwargs) -> Result:
    return run(["git", *args], repo, **kwargs)


def stages_run(output: str) -> list[str]:
    """Names of the stages that `dvc repro` / `dvc exp run` actually executed, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def read_lock(repo: Path) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load((Path(repo) / "dvc.lock").read_text())


def lock_outputs(repo: Path) -> list[str]:
    """Every output path recorded in `repo`'s dvc.lock (the files DVC pushes and pulls)."""
    return sorted(out["path"] for stage in read_lock(repo)["stages"].values() for out in stage.get("outs", []))


def lock_out_md5(repo: Path, rel: str) -> str:
    """The md5 (`....dir` for a directory) that `repo`'s dvc.lock records for the output `rel`."""
    for stage in read_lock(repo)["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == rel:
                return out["md5"]
    raise KeyError(f"{rel} is not an output in {repo}/dvc.lock")


def digest_tree(repo: Path, rel: str) -> dict[str, str]:
    """``{relative file path: sha256}`` for a file or every file under a directory."""
    root = Path(repo) / rel
    if root.is_file():
        return {rel: file_sha256(root)}
    if not root.exists():
        return {}
    return {
        path.relative_to(repo).as_posix(): file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def digest_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file of every output in ``repo``'s dvc.lock, present or not."""
    digests: dict[str, str] = {}
    for rel in lock_outputs(repo):
        digests.update(digest_tree(repo, rel))
    return digests


def copy_repo(src: Path, dest: Path) -> Path:
    """Copy a whole repository (work tree, .git, .dvc/cache) to ``dest``, leaving out .dvc/tmp.

    DVC's link-type default (reflink, else copy) means the copy shares nothing with ``src``. .dvc/tmp (the
    state DB of src's inodes, lock files of a DVC command running there from another test process) is
    DVC's to rebuild.
    """
    def skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == Path(src) / ".dvc" else []

    shutil.copytree(src, dest, symlinks=True, ignore=skip_dvc_tmp)
    return Path(dest)
