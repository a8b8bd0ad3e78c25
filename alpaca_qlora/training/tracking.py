"""Where training curves go: DVCLive always, Weights & Biases by default, never blocking a run.

DVCLive writes under reports/train/ with `dvcyaml=False`: the metrics and plots are declared once, at the
top level of dvc.yaml, so DVCLive never rewrites it. W&B's mode comes from the WANDB_MODE environment
variable if set, else from runtime.wandb_mode. "auto" (the default) and "online" log online only when
credentials are there (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a netrc entry for the W&B host, as
`wandb login` writes) and the server answers within a few seconds; otherwise they log offline into wandb/
at the repository root (git- and dvc-ignored) and print the `wandb sync` line that uploads the run later.
W&B is never left to ask for a login: with no credentials it is never started online.
"""
from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from alpaca_qlora.errors import UserError

TRAIN_LOG_DIR = "reports/train"
WANDB_HOST = "https://api.wandb.ai"
EXPERIMENT_WORKSPACES = (".dvc", "tmp", "exps")  # where `dvc exp run --queue / --temp` runs the stages


def resolve_wandb_mode(param_mode: str, *, probe_timeout_s: float = 3.0) -> str:
    """"disabled", "offline" or "online": what W&B will do in this run (see the module docstring)."""
    mode = os.environ.get("WANDB_MODE", param_mode).strip().lower()
    if mode == "dryrun":  # W&B's older name for offline
        mode = "offline"
    if mode not in {"auto", "disabled", "offline", "online"}:
        raise UserError(f"the environment's WANDB_MODE={mode!r} is not auto, online, offline or disabled; set it to "
                        "one of them, or unset it to use runtime.wandb_mode")
    if mode in {"disabled", "offline"}:
        return mode
    host = os.environ.get("WANDB_BASE_URL", WANDB_HOST)
    if not has_credentials(host):
        reason = f"no W&B credentials (WANDB_API_KEY or a netrc entry for {urlparse(host).hostname}: `wandb login`)"
    elif not _reachable(host, probe_timeout_s):
        reason = f"W&B server {host} unreachable"
    else:
        return "online"
    print(f"W&B: {reason}; logging offline" + (" (runtime.wandb_mode is online)" if mode == "online" else ""))
    return "offline"


def has_credentials(host: str) -> bool:
    """What wandb.init would log in with, without asking: an API key or token file in the environment, or
    a netrc entry for `host` (the NETRC file, else ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(urlparse(host).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_dir() -> Path:
    """The folder that gets wandb/ (WANDB_DIR wins): the repository root, also when DVC runs the stage in a
    temporary copy under .dvc/tmp/exps/ (a queued or --temp experiment), which is deleted afterwards."""
    if os.environ.get("WANDB_DIR"):
        return Path(os.environ["WANDB_DIR"])
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(EXPERIMENT_WORKSPACES)):
        if parts[i:i + len(EXPERIMENT_WORKSPACES)] == EXPERIMENT_WORKSPACES:
            return Path(*parts[:i])
    return cwd


def _reachable(url: str, timeout_s: float) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def run_revision() -> dict[str, str | bool | None]:
    """Where this run comes from: the git commit, and the DVC experiment when `dvc exp run` started it.

    The commit and its dirty flag are provenance.git_revision's, the same ones the adapter's metadata.json
    records. DVC sets DVC_EXP_BASELINE_REV (the commit the experiment is based on) and DVC_EXP_NAME in the
    environment of the stage commands it runs for an experiment; `dvc exp show` lists that name.
    """
    from alpaca_qlora.provenance import git_revision

    git = git_revision() or {"commit": None, "dirty": None}
    return {"git_commit": git["commit"], "git_dirty": git["dirty"], "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
            "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}


def training_callbacks_and_reporters(runtime_params: dict, *, run_config: dict | None = None) -> tuple[list, list[str]]:
    """DVCLive's HF callback, plus "wandb" in `report_to` when W&B is not disabled.

    With W&B on, the run is started here with `run_config` (the stage's params and data fingerprint) plus
    `run_revision()`, and named after the DVC experiment, so a W&B run leads back to its DVC experiment.
    transformers' WandbCallback then reuses this run and adds the trainer's arguments to its config.
    """
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    mode = resolve_wandb_mode(runtime_params["wandb_mode"])
    os.environ["WANDB_MODE"] = mode
    reporters = []
    if mode != "disabled":
        os.environ.setdefault("WANDB_PROJECT", runtime_params["wandb_project"])
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        import wandb

        revision = run_revision()
        run = wandb.init(project=os.environ["WANDB_PROJECT"], mode=mode, name=revision["dvc_exp_name"],
                         job_type="train", dir=str(wandb_dir()), config={**(run_config or {}), "revision": revision})
        if mode == "offline":
            print(f"train: W&B run saved offline; upload it with: wandb sync {Path(run.dir).parent}")
        reporters.append("wandb")
    live = Live(dir=TRAIN_LOG_DIR, dvcyaml=False, save_dvc_exp=False, report=None)
    return [DVCLiveCallback(live=live, log_model=None)], reporters
