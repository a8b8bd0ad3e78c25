"""Typed access to params.yaml, one section at a time.

Read as YAML 1.2 (as DVC does), so `2e-4` is a float and not the string PyYAML 1.1 would give.
Each stage asks only for the sections it declares in dvc.yaml, and every key is checked for presence and
type here, so a typo fails with the file and key at fault instead of deep inside a library.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from alpaca_qlora.errors import UserError

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
        "rows_per_step": (int,), "batch_size": (int, str), "gradient_checkpointing": (str, bool),
        "warmup_steps": (int,), "lr_scheduler": (str,), "weight_decay": (float, int), "optimizer": (str,),
        "packing": (bool,), "train_on_prompt": (bool,), "neftune_noise_alpha": (float, int), "seed": (int,),
        "num_processes": (int,),
    },
    # How the train stage runs and reports, never what it learns: no stage declares this section in dvc.yaml.
    "runtime": {"launcher": (str,), "logging_steps": (int,), "save_steps": (int,), "wandb_mode": (str,),
                "wandb_project": (str,)},
    "evaluate": {"backend": (str,), "batch_size": (int,), "generation_batch_size": (int,), "max_new_tokens": (int,),
                 "lm_eval_tasks": (list,), "lm_eval_limit": (int,)},
}

CHOICES = {
    ("format", "too_long"): ("truncate", "drop", "error"),
    ("train", "backend"): ("unsloth", "hf"),
    ("train", "gradient_checkpointing"): ("auto", "unsloth", True, False),
    ("runtime", "wandb_mode"): ("auto", "online", "offline", "disabled"),
    ("runtime", "launcher"): ("torchrun", "accelerate"),
    # The inference paths of alpaca_qlora/modeling/inference.py, which says what each one is.
    ("evaluate", "backend"): ("auto", "unsloth", "hf", "merged"),
}


# section, key -> (test, what the value must be). Checked after the type, so a bad value fails here with its
# key instead of deep inside TRL or PEFT, or (for data.fraction) after minutes of loading data.
BOUNDS = {
    ("data", "fraction"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("data", "eval_size"): (lambda v: v >= 1, "at least 1"),
    ("data", "seed"): (lambda v: v >= 0, "0 or more"),
    ("model", "max_seq_length"): (lambda v: v >= 16, "at least 16"),
    ("lora", "r"): (lambda v: v >= 1, "a positive integer (the LoRA rank, e.g. 16)"),
    ("lora", "alpha"): (lambda v: v > 0, "positive"),
    ("lora", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("lora", "target_modules"): (lambda v: bool(v) and all(isinstance(m, str) and m for m in v),
                                 "a non-empty list of module names"),
    ("train", "learning_rate"): (lambda v: v > 0, "positive"),
    ("train", "epochs"): (lambda v: v > 0, "positive"),
    ("train", "max_steps"): (lambda v: v == -1 or v >= 1, "-1 (all epochs) or a positive number of steps"),
    ("train", "rows_per_step"): (lambda v: v >= 1, "at least 1"),
    ("train", "batch_size"): (lambda v: v == "auto" or isinstance(v, int) and v >= 1, "auto or a positive integer"),
    ("train", "warmup_steps"): (lambda v: v >= 0, "0 or more"),
    ("train", "neftune_noise_alpha"): (lambda v: v >= 0, "0 (off) or a positive noise scale, e.g. 5"),
    ("train", "num_processes"): (lambda v: v >= 1, "at least 1"),
    ("train", "seed"): (lambda v: v >= 0, "0 or more"),
    ("runtime", "logging_steps"): (lambda v: v >= 1, "at least 1"),
    ("runtime", "save_steps"): (lambda v: v >= 0, "0 (no checkpoints) or a positive number of steps"),
    ("evaluate", "batch_size"): (lambda v: v >= 1, "at least 1"),
    ("evaluate", "generation_batch_size"): (lambda v: v >= 1, "at least 1"),
    ("evaluate", "max_new_tokens"): (lambda v: v >= 1, "at least 1"),
    ("evaluate", "lm_eval_tasks"): (lambda v: all(isinstance(t, str) and t for t in v),
                                    "a list of lm-eval task names or task YAML paths ([] = off)"),
    ("evaluate", "lm_eval_limit"): (lambda v: v >= 0, "0 (every example) or a positive number per task"),
}


FIX = "fix it in params.yaml (the comment above each key says what it takes)"


class ParamsError(UserError, ValueError):
    """A missing, unknown or mistyped key in params.yaml, or a value out of bounds."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML file as YAML 1.2 into plain dicts and lists."""
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = YAML(typ="safe", pure=True).load(handle)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found in {Path.cwd()}; run from the repository root") from None
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        context = (f"{error.context} from line {error.context_mark.line + 1}: " if error.context and error.context_mark
                   else "")
        raise ParamsError(f"{where}: not valid YAML ({context}{error.problem}); fix the indentation or quoting "
                          f"there (`git diff {path}` shows what changed)") from None
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}; restore it with "
                          f"`git checkout {path}`")
    return loaded


def load_section(name: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Return params section `name`, every key present and of the declared type."""
    section = read_yaml(path).get(name)
    if not isinstance(section, dict):
        raise ParamsError(f"{path}: section '{name}' is missing or not a mapping; add it (the committed "
                          "params.yaml has every section, each key commented)")
    return validate_section(name, section, path)


def validate_section(name: str, section: dict[str, Any], path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    schema = SCHEMA[name]
    unknown = sorted(set(section) - set(schema))
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                          f"known keys of '{name}': {', '.join(schema)}")
    for key, types in schema.items():
        if key not in section:
            raise ParamsError(f"{path}: key '{name}.{key}' is missing; add it (the committed params.yaml has "
                              "every key, commented)")
        value = section[key]
        hint = FIX
        if isinstance(value, str) and _is_number(value) and (int in types or float in types):
            hint = f"it is a quoted string: write {value} without quotes"
        # bool is an int in Python: refuse `r: true` and `packing: 1` alike.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise ParamsError(f"{path}: key '{name}.{key}' must be {expected}, got {value!r}; {hint}")
        allowed = CHOICES.get((name, key))
        if allowed and not any(value == choice and type(value) is type(choice) for choice in allowed):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                hint = f"it is a quoted string: write {value.lower()} without quotes"
            raise ParamsError(f"{path}: key '{name}.{key}' must be one of "
                              f"{', '.join(map(yaml_text, allowed))}, got {value!r}; {hint}")
        bound = BOUNDS.get((name, key))
        if bound and not bound[0](value):
            raise ParamsError(f"{path}: key '{name}.{key}' must be {bound[1]}, got {value!r}; {hint}")
    return dict(section)


def yaml_text(value: Any) -> str:
    """A choice as it is written in params.yaml: true/false for booleans."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_trainer_names(train_params: dict[str, Any]) -> None:
    """train.optimizer and train.lr_scheduler name one of transformers' own, checked before the model loads.

    Imports transformers: call it after modeling.backends.get(), which imports Unsloth first.
    """
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, names in (("optimizer", OptimizerNames), ("lr_scheduler", SchedulerType)):
        known = [item.value for item in names]
        if train_params[key] not in known:
            close = difflib.get_close_matches(train_params[key], known, n=3) or known[:3]
            raise ParamsError(f"{PARAMS_FILE}: key 'train.{key}' is {train_params[key]!r}, not one of the {len(known)} "
                              f"names transformers knows; write one of them, e.g. {', '.join(close)} (all of them: "
                              f"{names.__module__}.{names.__name__})")
