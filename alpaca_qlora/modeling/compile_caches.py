"""The compilers' on-disk caches kept in build/compile-cache/, where the next run of a stage finds them.

A first training step compiles: Unsloth writes patched module sources (UNSLOTH_COMPILE_LOCATION, else
./unsloth_compiled_cache), torch.compile traces and generates kernels (TORCHINDUCTOR_CACHE_DIR, else
/tmp/torchinductor_<user>), Triton builds them (TRITON_CACHE_DIR, else ~/.triton/cache), and Unsloth bundles
the compiled artifacts per model family (UNSLOTH_MEGA_CACHE_DIR, else ~/.cache/unsloth/mega_cache; see
unsloth_zoo/compile_cache.py). Their defaults scatter over /tmp and $HOME, which a fresh machine or
container does not have; under the project's build/ they go with the checkout and `make clean` clears them.
Each variable is read by its library when it compiles, so setting them before Unsloth and torch are
imported is enough. A variable the user set is kept.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ROOT = Path("build") / "compile-cache"
VARIABLES = {"UNSLOTH_COMPILE_LOCATION": "unsloth_compiled", "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
             "TRITON_CACHE_DIR": "triton", "UNSLOTH_MEGA_CACHE_DIR": "unsloth_mega"}


def use_project_caches(root: Path = CACHE_ROOT, environ=os.environ) -> dict[str, str]:
    """Point each compiler cache the user did not set at `root` (made absolute); return what is in effect.

    The folders are created owner-only (0700): Unsloth's mega-cache refuses to load from a directory that
    another user could write, since its bundles are executable code.
    """
    root = Path(root).resolve()
    for variable, folder in VARIABLES.items():
        if variable not in environ or _torch_default(variable, environ):
            path = root / folder
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
            root.chmod(0o700)
            environ[variable] = str(path)
    return {variable: environ[variable] for variable in VARIABLES}


def _torch_default(variable: str, environ) -> bool:
    """`import torch._dynamo` writes its default into TORCHINDUCTOR_CACHE_DIR: that is not a user's choice."""
    if variable != "TORCHINDUCTOR_CACHE_DIR" or "torch._dynamo" not in sys.modules:
        return False
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(environ[variable]) == os.path.abspath(default_cache_dir())
