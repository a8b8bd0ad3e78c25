"""Typed access to params.yaml, one section at a time.

Read as YAML 1.2 (as DVC does), so `2e-4` is a float and not the string PyYAML 1.1 would give.
Each stage asks only for the sections it declares in dvc.yaml, and every key is checked for presence and
type here, so a typo fails with the file and key at fault instead of deep inside a library.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

PARAMS_FILE = Path("params.yaml")

# section -> key -> accepted types. The one list of keys the code understands.
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "data": {"source": (str,), "split": (str,), "fraction": (float, int), "eval_size": (int,), "seed": (int,)},
    "model": {"name": (str,), "max_seq_length": (int,), "load_in_4bit": (bool,), "offline_seed": (int,),
              "trust_remote_code": (bool,)},
    "format": {"template": (str,), "input_free_variant": (bool,), "too_long": (str,)},
    "lora": {"r": (int,), "alpha": (int, float), "dropout": (float, int), "target_modules": (list,),
             "use_rslora": (bool,)},
    "train": {
        "backend": (str,), "learning_rate": (float,), "epochs": (float, int), "max_steps": (int,),
        "batch_size": (int,), "gradient_accumulation_steps": (int,), "warmup_steps": (int,),
        "lr_scheduler": (str,), "weight_decay": (float, int), "optimizer": (str,), "packing": (bool,),
        "train_on_prompt": (bool,), "neftune_noise_alpha": (float, int), "seed": (int,), "num_processes": (int,),
    },
    # How the train stage runs and reports, never what it learns: no stage declares this section in dvc.yaml.
    "runtime": {"launcher": (str,), "logging_steps": (int,), "save_steps": (int,), "wandb_mode": (str,),
                "wandb_project": (str,)},
    "evaluate": {"batch_size": (int,), "num_generations": (int,), "max_new_tokens": (int,)},
}

CHOICES = {
    ("format", "too_long"): ("truncate", "drop", "error"),
    ("train", "backend"): ("unsloth", "hf"),
    ("runtime", "wandb_mode"): ("auto", "online", "offline", "disabled"),
    ("runtime", "launcher"): ("torchrun", "accelerate"),
}


# section, key -> (test, what the value must be). Checked after the type, so a bad value fails here with its
# key instead of deep inside TRL or PEFT, or (for data.fraction) after minutes of loading data.
BOUNDS = {
    ("data", "fraction"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("data", "eval_size"): (lambda v: v >= 1, "at least 1"),
    ("model", "max_seq_length"): (lambda v: v >= 16, "at least 16"),
    ("lora", "r"): (lambda v: v >= 1, "a positive integer (the LoRA rank, e.g. 16)"),
    ("lora", "alpha"): (lambda v: v > 0, "positive"),
    ("lora", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("lora", "target_modules"): (lambda v: bool(v) and all(isinstance(m, str) and m for m in v),
                                 "a non-empty list of module names"),
    ("train", "learning_rate"): (lambda v: v > 0, "positive"),
    ("train", "epochs"): (lambda v: v > 0, "positive"),
    ("train", "max_steps"): (lambda v: v == -1 or v >= 1, "-1 (all epochs) or a positive number of steps"),
    ("train", "batch_size"): (lambda v: v >= 1, "at least 1"),
    ("train", "gradient_accumulation_steps"): (lambda v: v >= 1, "at least 1"),
    ("train", "warmup_steps"): (lambda v: v >= 0, "0 or more"),
    ("train", "neftune_noise_alpha"): (lambda v: v >= 0, "0 (off) or a positive noise scale, e.g. 5"),
    ("train", "num_processes"): (lambda v: v >= 1, "at least 1"),
    ("runtime", "logging_steps"): (lambda v: v >= 1, "at least 1"),
    ("runtime", "save_steps"): (lambda v: v >= 0, "0 (no checkpoints) or a positive number of steps"),
}


class ParamsError(ValueError):
    """A missing, unknown or mistyped key in params.yaml."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML file as YAML 1.2 into plain dicts and lists."""
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = YAML(typ="safe", pure=True).load(handle)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_section(name: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Return params section `name`, every key present and of the declared type."""
    section = read_yaml(path).get(name)
    if not isinstance(section, dict):
        raise ParamsError(f"{path}: section '{name}' is missing or not a mapping")
    return validate_section(name, section, path)


def validate_section(name: str, section: dict[str, Any], path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    schema = SCHEMA[name]
    unknown = sorted(set(section) - set(schema))
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                          f"known keys of '{name}': {', '.join(schema)}")
    for key, types in schema.items():
        if key not in section:
            raise ParamsError(f"{path}: key '{name}.{key}' is missing")
        value = section[key]
        # bool is an int in Python: refuse `r: true` and `packing: 1` alike.
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            hint = ""
            if isinstance(value, str) and _is_number(value) and (int in types or float in types):
                hint = f"; it is a quoted string: write {value} without quotes"
            raise ParamsError(f"{path}: key '{name}.{key}' must be {expected}, got {value!r}{hint}")
        allowed = CHOICES.get((name, key))
        if allowed and value not in allowed:
            raise ParamsError(f"{path}: key '{name}.{key}' must be one of {', '.join(allowed)}, got {value!r}")
        bound = BOUNDS.get((name, key))
        if bound and not bound[0](value):
            raise ParamsError(f"{path}: key '{name}.{key}' must be {bound[1]}, got {value!r}")
    return dict(section)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
