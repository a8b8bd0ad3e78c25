"""The adapter folder (models/adapter/) and its metadata.json: the one writer and the one reader.

The folder holds PEFT's adapter (safetensors + adapter_config.json), the tokenizer training used, and
metadata.json: how the adapter was made (base model, params, template, data fingerprint, library versions,
git revision) and what happened while making it (what the libraries really ran, loss, speed, memory).
An adapter found alone therefore still says how to rebuild its prompt and its base model.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.errors import UserError
from alpaca_qlora.files import atomic_directory, read_json, write_json

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MAKE_ONE = "`dvc repro` trains one into models/adapter, `dvc pull models/adapter` fetches the team's"


class AdapterError(UserError, ValueError):
    """A folder that is not a usable adapter written by the train stage."""


@dataclass(frozen=True)
class AdapterMetadata:
    base_model: str
    backend: str
    params: dict[str, dict[str, Any]]  # the model, lora and train sections the run read
    template: dict[str, str]  # PromptTemplate.as_dict() of the template training used
    format: dict[str, Any]  # {"input_free_variant": bool}
    data: dict[str, Any]  # {"formatted_train_sha256", "train_rows", "sample": data/sampled/stats.json}
    reproduce: dict[str, Any]  # {"command": "dvc repro" or "dvc exp run -S ...", "git": {...}, "checkpoint_run_key"}
    resumed_from_step: int | None  # steps restored from a killed run's checkpoint; None: trained in one go
    effective: dict[str, Any]  # what actually ran, after the libraries' own adjustments (Unsloth on CPU, ...)
    results: dict[str, Any]  # loss, runtime, real tokens and tokens/s of this process's steps, peak memory
    libraries: dict[str, str]
    timeline: dict[str, Any] | None = None  # where the stage's seconds went (alpaca_qlora/timeline.py)

    @property
    def model_params(self) -> dict[str, Any]:
        return dict(self.params["model"])

    def prompt_renderer(self) -> Callable[[str, str], str]:
        """(instruction, input) -> prompt, with the template and variant choice the adapter was trained with."""
        template = PromptTemplate.from_dict(self.template)
        variant = self.format["input_free_variant"]

        def render(instruction: str, input_text: str = "") -> str:
            return template.render_prompt({"instruction": instruction, "input": input_text},
                                          input_free_variant=variant)
        return render

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, adapter_dir: Path) -> "AdapterMetadata":
        """The metadata of an adapter folder, after checking that it is one (check_adapter_folder)."""
        path = check_adapter_folder(adapter_dir) / METADATA_FILE
        try:
            found = read_json(path)
        except (ValueError, UnicodeDecodeError) as error:
            raise AdapterError(f"{path}: not valid JSON ({error}); restore the folder (`dvc checkout "
                               "models/adapter`) or retrain") from None
        missing = [field.name for field in fields(cls) if (not isinstance(found, dict) or field.name not in found)
                   and field.default is MISSING]
        if missing:
            raise AdapterError(f"{path}: no {', '.join(missing)} recorded; retrain with the current train stage")
        return cls(**{field.name: found[field.name] for field in fields(cls) if field.name in found})


def check_adapter_folder(adapter_dir: Path) -> Path:
    """`adapter_dir` as a Path if it is a complete adapter folder of the train stage; else say what it is."""
    folder = Path(adapter_dir)
    if not folder.exists():
        raise AdapterError(f"{folder} does not exist; {MAKE_ONE}")
    if not folder.is_dir():
        raise AdapterError(f"{folder} is a file, not an adapter folder; give the folder the train stage writes "
                           "(models/adapter)")
    if (folder / "config.json").is_file() and not (folder / CONFIG_FILE).is_file():
        raise AdapterError(f"{folder} is a full model (config.json, no {CONFIG_FILE}), not an adapter; give the "
                           "adapter folder (models/adapter)")
    if not (folder / METADATA_FILE).is_file():
        what = "a PEFT adapter without" if (folder / CONFIG_FILE).is_file() else "not an adapter folder: no"
        raise AdapterError(f"{folder} is {what} {METADATA_FILE} (which records the base model, template and params "
                           f"it was trained with); give a folder written by the train stage: {MAKE_ONE}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise AdapterError(f"{folder}: no {' or '.join(missing)} (only safetensors adapters are loaded, never a "
                           f"pickled adapter_model.bin); {MAKE_ONE}")
    return folder


def save_adapter(out: Path, model, tokenizer, metadata: AdapterMetadata, *, card: str, timeline=None) -> None:
    """Adapter safetensors, config, tokenizer, metadata.json and the model card (README.md, in place of PEFT's
    empty template), all renamed into `out` at once when complete:
    a full disk or a kill while saving leaves no folder that looks like a valid adapter.

    With a `timeline`, the weights' writing is its phase "save", and metadata.json records the timeline up
    to there (the flush to disk and the rename come after)."""
    with atomic_directory(out) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        if timeline is not None:
            timeline.mark("save")
            metadata = replace(metadata, timeline=timeline.as_dict())
        write_json(staging / METADATA_FILE, metadata.as_dict())
        (staging / "README.md").write_text(card, encoding="utf-8")
