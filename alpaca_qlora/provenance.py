"""What a run records about itself: library versions, the device, peak memory and the git revision."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata as importlib_metadata

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
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": any(line[3:] != "dvc.lock" for line in changed)}
