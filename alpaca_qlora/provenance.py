"""What a run records about itself: library versions, the device, peak memory, the git revision, and the
command that reproduces it."""
from __future__ import annotations

import json
import platform
import shlex
import subprocess
from importlib import metadata as importlib_metadata
from urllib.parse import urlsplit, urlunsplit

from ruamel.yaml import YAML

from alpaca_qlora.params import PARAMS_FILE, read_yaml

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "unsloth",
             "unsloth_zoo", "dvc", "dvclive")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description() -> dict[str, object]:
    import torch

    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def peak_memory_gib() -> dict[str, float]:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on a CPU run."""
    import resource

    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    return {"peak_cpu_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def git_revision() -> dict[str, object] | None:
    """The commit the run started from and whether tracked files differed from it (None outside git).

    dvc.lock is left out of "dirty": `dvc repro` rewrites it as part of the very run being described.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, check=True, timeout=30).stdout.splitlines()
        origin = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    changed = sorted(line[3:] for line in changed if line[3:] != "dvc.lock")
    return {"commit": commit, "dirty": bool(changed), "changed": changed,
            "origin": _without_credentials(origin) or None}


def _without_credentials(url: str) -> str:
    """An https://user:token@host/... remote as https://host/...: a token must never reach a model card."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def reproduction() -> dict[str, object]:
    """{"command": the dvc command that rebuilds this run's outputs, "git": git_revision()}."""
    git = git_revision()
    return {"command": reproduce_command(git["commit"] if git else None), "git": git}


# The params sections that decide the adapter (data, its formatting, the model, LoRA, training); the
# `runtime` and `evaluate` sections cannot change it.
ADAPTER_SECTIONS = ("data", "format", "model", "lora", "train")


def reproduce_command(commit: str | None, *, params_path=PARAMS_FILE) -> str:
    """The `dvc` command that rebuilds this adapter from `commit`: `dvc repro` when params.yaml's adapter
    sections are the commit's, else `dvc exp run -S key=value ...` for each key that differs (an experiment)."""
    if commit is None:
        return "dvc repro"
    shown = subprocess.run(["git", "show", f"{commit}:{params_path}"], capture_output=True, text=True, timeout=10)
    committed = YAML(typ="safe", pure=True).load(shown.stdout) if shown.returncode == 0 else None
    current = read_yaml(params_path)
    if not isinstance(committed, dict):
        return "dvc repro"
    changed = [f"{section}.{key}={_yaml_scalar(value)}" for section in ADAPTER_SECTIONS
               for key, value in (current.get(section) or {}).items()
               if (committed.get(section) or {}).get(key, _MISSING) != value]
    return "dvc exp run " + " ".join(f"-S {shlex.quote(item)}" for item in changed) if changed else "dvc repro"


_MISSING = object()


def _yaml_scalar(value) -> str:
    """`value` as `dvc exp run -S` reads it back (YAML 1.2): plain when that round-trips, else JSON."""
    if isinstance(value, str) and value and YAML(typ="safe", pure=True).load(value) == value:
        return value
    return json.dumps(value)
