"""Where training curves go: DVCLive always, Weights & Biases when asked, never blocking a run.

DVCLive writes under reports/train/ with `dvcyaml=False`: the metrics and plots are declared once, at the
top level of dvc.yaml, so DVCLive never rewrites it. W&B's mode comes from the WANDB_MODE environment
variable if set, else from runtime.wandb_mode. "online" without a reachable server falls back to "offline"
(runs are synced later with `wandb sync wandb/`) instead of hanging or failing the stage.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from alpaca_qlora.errors import UserError

TRAIN_LOG_DIR = "reports/train"


def resolve_wandb_mode(param_mode: str, *, probe_timeout_s: float = 3.0) -> str:
    mode = os.environ.get("WANDB_MODE", param_mode).strip().lower()
    if mode == "dryrun":  # W&B's older name for offline
        mode = "offline"
    if mode not in {"disabled", "offline", "online"}:
        raise UserError(f"the environment's WANDB_MODE={mode!r} is not disabled, offline or online; set it to one "
                        "of them, or unset it to use runtime.wandb_mode")
    if mode == "online" and not _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"),
                                           probe_timeout_s):
        print("train: Weights & Biases server unreachable; logging offline (sync later: wandb sync wandb/)")
        mode = "offline"
    return mode


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
        wandb.init(project=os.environ["WANDB_PROJECT"], mode=mode, name=revision["dvc_exp_name"], job_type="train",
                   config={**(run_config or {}), "revision": revision})
        reporters.append("wandb")
    live = Live(dir=TRAIN_LOG_DIR, dvcyaml=False, save_dvc_exp=False, report=None)
    return [DVCLiveCallback(live=live, log_model=None)], reporters
