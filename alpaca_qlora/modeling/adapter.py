"""The adapter folder (models/adapter/) and its metadata.json: the one writer and the one reader.

The folder holds PEFT's adapter (safetensors + adapter_config.json), the tokenizer training used, and
metadata.json: how the adapter was made (base model, params, template, data fingerprint, library versions,
git revision) and what happened while making it (what the libraries really ran, loss, speed, memory).
An adapter found alone therefore still says how to rebuild its prompt and its base model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.files import atomic_directory, read_json, write_json

METADATA_FILE = "metadata.json"


class AdapterError(ValueError):
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
        path = Path(adapter_dir) / METADATA_FILE
        if not path.is_file():
            raise AdapterError(f"{path} not found: the adapter must be a folder written by the train stage "
                               "(models/adapter), which records the base model, template and params it was "
                               "trained with")
        found = read_json(path)
        missing = [field.name for field in fields(cls) if field.name not in found]
        if missing:
            raise AdapterError(f"{path}: no {', '.join(missing)} recorded; retrain with the current train stage")
        return cls(**{field.name: found[field.name] for field in fields(cls)})


def save_adapter(out: Path, model, tokenizer, metadata: AdapterMetadata, *, card: str) -> None:
    """Adapter safetensors, config, tokenizer, metadata.json and the model card (README.md, in place of PEFT's
    empty template), all renamed into `out` at once when complete: a full disk or a kill while saving leaves
    no folder that looks like a valid adapter."""
    with atomic_directory(out) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        write_json(staging / METADATA_FILE, metadata.as_dict())
        (staging / "README.md").write_text(card, encoding="utf-8")
