"""Checks of the machine and the model before any long work starts, each failing with what would fix it.

Without them, the same mistakes surface minutes later as a CUDA assertion inside Unsloth, a hub
connection retry loop, or PEFT's "Target modules ... not found" with no list of what does exist.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from alpaca_qlora.errors import UserError
from alpaca_qlora.modeling.offline_models import OFFLINE_PREFIX, is_offline

TRUTHY = {"1", "on", "yes", "true"}


class EnvironmentProblem(UserError, RuntimeError):
    """The machine, the network or the model cannot run what params.yaml asks for."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/ON/YES/TRUE, any case)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUTHY


def check_backend_device(backend: str, model_name: str, *, cuda_available: bool | None = None) -> None:
    """Unsloth with a real (GPU-sized, usually prequantized bitsandbytes) model needs CUDA.

    The offline models are the exception: Unsloth trains them on a CPU, which is what the offline profile
    and the tests do.
    """
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if backend == "unsloth" and not cuda_available and not is_offline(model_name):
        raise EnvironmentProblem(
            f"params.yaml: train.backend=unsloth with model.name={model_name!r} needs a CUDA GPU, and this "
            "machine has none (torch.cuda.is_available() is False); run on a GPU machine; or, on a CPU, use "
            "the offline profile (`make smoke`, or `python -m alpaca_qlora.cli.offline_workspace build/smoke` "
            f"then `dvc repro` there: model.name={OFFLINE_PREFIX}tiny-mistral); or set train.backend: hf "
            "(transformers + peft, runs on a CPU, very slowly for a 7B model)")


def check_model_reachable(model_name: str, *, timeout_s: float = 10.0) -> None:
    """A hub id must be in the local cache, or the hub must answer; else name the id and HF_HUB_OFFLINE.

    A local directory must hold a model (config.json), and offline:<preset> models need nothing. A name that
    is neither an existing path nor a valid hub id is said to be so. The probe is one HTTP request with a
    timeout, instead of the loaders' retries.
    """
    if is_offline(model_name):
        return
    if os.path.exists(model_name):
        check_model_folder(Path(model_name))
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_name)
    except HFValidationError:
        raise EnvironmentProblem(
            f"params.yaml: model.name={model_name!r} is neither an existing local folder nor a Hugging Face hub "
            f"id (org/name); fix the path or the id, or use the offline profile ({OFFLINE_PREFIX}tiny-mistral)"
        ) from None

    if isinstance(try_to_load_from_cache(model_name, "config.json"), str):
        return  # cached: from_pretrained will work without network
    fixes = (f"download it once on a machine with network (`huggingface-cli download {model_name}`) so it is "
             "in the Hugging Face cache, point model.name at a local directory, or use the offline profile "
             f"(model.name: {OFFLINE_PREFIX}tiny-mistral)")
    if hub_offline():
        raise EnvironmentProblem(
            f"params.yaml: model.name={model_name!r} is not in the local Hugging Face cache, and "
            f"HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']} forbids downloading it; unset HF_HUB_OFFLINE if "
            f"this machine has network, or {fixes}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(model_name, timeout=timeout_s)
    except GatedRepoError:
        raise EnvironmentProblem(
            f"params.yaml: model.name={model_name!r} is a gated model on the Hugging Face hub; accept its terms on "
            "its hub page, then log in here (`hf auth login`, or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise EnvironmentProblem(
            f"params.yaml: model.name={model_name!r} is not a model on the Hugging Face hub (or is private); check "
            "the id, or log in (`hf auth login`, or set HF_TOKEN) if it is private") from None
    except Exception as error:  # connection refused, DNS, timeout, 401/404: all mean "cannot load it"
        raise EnvironmentProblem(
            f"params.yaml: model.name={model_name!r} cannot be reached on the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); if the id is right "
            f"and this machine has no network, set HF_HUB_OFFLINE=1 after you {fixes}") from None


def check_model_folder(path: Path) -> None:
    """A local model.name must be a transformers model folder; an adapter or any other folder is said to be so."""
    fix = "set model.name to a folder holding a model's config.json and weights, or to a hub id"
    if not path.is_dir():
        raise EnvironmentProblem(f"params.yaml: model.name='{path}' is a file, not a model folder; {fix}")
    if (path / "config.json").is_file():
        return
    if (path / "adapter_config.json").is_file():
        raise EnvironmentProblem(f"params.yaml: model.name='{path}' is a LoRA adapter, not a base model; set "
                                 "model.name to its base model (base_model in its metadata.json)")
    raise EnvironmentProblem(f"params.yaml: model.name='{path}' is a folder without config.json, not a model; {fix}")


def linear_module_names(model) -> list[str]:
    """The short names (q_proj, ...) of the model's linear layers: what lora.target_modules may list."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def check_target_modules(model, target_modules: Iterable[str], model_name: str) -> None:
    available = linear_module_names(model)
    missing = [name for name in target_modules if name not in available]
    if missing:
        raise EnvironmentProblem(
            f"params.yaml: lora.target_modules lists {', '.join(map(repr, missing))}, not a linear layer of "
            f"model {model_name!r}; list only its linear layers: {', '.join(available)}")


def check_before_loading(backend: str, model_params: dict[str, Any]) -> None:
    check_backend_device(backend, model_params["name"])
    check_model_reachable(model_params["name"])
