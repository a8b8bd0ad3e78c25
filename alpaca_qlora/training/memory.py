"""`train.batch_size: auto` and `train.gradient_checkpointing: auto`: what fits the device, decided before loading.

A step always trains `train.rows_per_step` rows, split evenly over the processes; each process runs them as
accumulation x micro-batch. The split does not change the math (the loss is normalized by the label tokens
of the whole step), only speed and memory, so it is chosen here from the model's geometry (config.json),
the tokens of one micro-batch and the free memory of the device: the largest micro-batch that fits without
gradient checkpointing, else the largest that fits with the backend's memory-saving checkpointing.

The memory model, peak = fixed + tokens of one micro-batch x bytes per token, comes from the train stage on
one H200 (torch.cuda.max_memory_allocated; Mistral-7B geometry: hidden 4096, intermediate 14336, 32 layers,
vocab 32000; 4-bit NF4, LoRA r16 on the 7 projections; rows of 2048 packed tokens):

    unsloth, checkpointing "unsloth" (offloaded), batch 4 x 2:  5.9 GiB
    unsloth, checkpointing off,                   batch 4 x 2: 32.0 GiB
    unsloth, checkpointing off,                   batch 8 x 1: 59.0 GiB
    hf, checkpointing on (HF's), 2 and 8 rows of 2048 (benchmarks/train_step.py): 11.6 and 32.4 GiB

- off: 27.0 GiB per 8,192 more tokens, 3.375 MiB a token, which is exactly 6.0 bytes x layers x (hidden +
  intermediate): every layer keeps its activations for the backward pass. Fixed part: 5.0 GiB.
- "unsloth": 0.9 GiB above the fixed part for 8,192 tokens, 6.4 bytes x (hidden + intermediate): about one
  layer's activations at a time, the other layers' inputs being offloaded to CPU memory.
- hf with checkpointing: 1.69 MiB a token above a fixed 4.67 GiB, scaled like "off" (an assumption: one
  geometry measured). Without checkpointing hf was never measured, so auto never turns it off there.
- "true" on Unsloth (checkpointing kept on the GPU) was not measured: the "off" figure bounds it.
- The fixed part for another geometry: its weights (4-bit: 0.5 byte + the NF4 constants per parameter of
  the linear layers; 16-bit embeddings and head) and LoRA states (10 bytes a parameter: fp32 weight and
  gradient, 8-bit Adam moments), plus what remains of the measured fixed part (CUDA workspaces, the loss).
- Not in the fit, as a check: Unsloth off, 2 rows of 2048 (benchmarks/train_step.py): 19.3 GiB measured,
  18.5 GiB predicted. So a plan needs 1.25 x the prediction + 1.5 GiB free (fragmentation, the 4% above):
  off at 8 x 1 needs 75 GiB (an H200 has ~139 free); a 16 GB GPU (~15.5 free) keeps checkpointing.

On a CPU the same model is applied to the memory available (MemAvailable, shared by the local processes).
Over 200 lines because the measurements, the model built from them and the rule that uses it are kept in one
file, to be read (and re-measured) together.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
MARGIN_FACTOR, MARGIN_GIB = 1.25, 1.5

# The measurements above: (backend, checkpointing, tokens of one micro-batch) -> peak GiB.
MEASURED_PEAK_GIB = {("unsloth", "unsloth", 8192): 5.9, ("unsloth", "off", 8192): 32.0,
                     ("unsloth", "off", 16384): 59.0, ("hf", "true", 4096): 11.6, ("hf", "true", 16384): 32.4}


@dataclass(frozen=True)
class Geometry:
    """What the memory of a decoder-only transformer scales with (names as in transformers' configs)."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int

    @classmethod
    def from_config(cls, config, model_name: str) -> "Geometry":
        values = {name: getattr(config, name, None) for name in ("hidden_size", "intermediate_size",
                                                                 "num_hidden_layers", "num_attention_heads",
                                                                 "vocab_size")}
        values["num_key_value_heads"] = getattr(config, "num_key_value_heads", None) or values["num_attention_heads"]
        missing = [name for name, value in values.items() if not isinstance(value, int)]
        if missing:
            raise ValueError(f"model.name {model_name!r}: its config.json has no {', '.join(missing)}, so "
                             "train.batch_size=auto / train.gradient_checkpointing=auto cannot predict its memory; "
                             "set both explicitly in params.yaml")
        return cls(**values)

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        kv = self.num_key_value_heads * (h // self.num_attention_heads)
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def weight_bytes(self, *, load_in_4bit: bool) -> float:
        linear = self.num_hidden_layers * sum(a * b for a, b in self.projection_shapes().values())
        per_param = 0.5 + 1 / 64 + 4 / (64 * 256) if load_in_4bit else 2.0  # NF4 + double-quantized absmax
        return linear * per_param + 2 * self.vocab_size * self.hidden_size * 2  # embeddings and head in 16 bit

    def lora_bytes(self, r: int, targets: list[str]) -> float:
        shapes = self.projection_shapes()
        params = self.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)
        return params * 10.0


MISTRAL_7B = Geometry(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=32000)
SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _fit(backend: str, mode: str, low: int, high: int) -> tuple[float, float]:
    """(fixed GiB, GiB per token) of the line through two measurements."""
    per_token = (MEASURED_PEAK_GIB[backend, mode, high] - MEASURED_PEAK_GIB[backend, mode, low]) / (high - low)
    return MEASURED_PEAK_GIB[backend, mode, high] - high * per_token, per_token


_OFF_FIXED, _OFF_PER_TOKEN = _fit("unsloth", "off", 8192, 16384)
_HF_FIXED, _HF_PER_TOKEN = _fit("hf", "true", 4096, 16384)
_REFERENCE_STATES_GIB = (MISTRAL_7B.weight_bytes(load_in_4bit=True) + MISTRAL_7B.lora_bytes(16, SEVEN_PROJECTIONS)) / GIB
# Bytes per token per unit of (hidden + intermediate), and per layer where every layer keeps its activations.
_UNITS = MISTRAL_7B.hidden_size + MISTRAL_7B.intermediate_size
PER_TOKEN_BYTES = {  # (backend, checkpointing) -> (bytes per layer-unit, bytes per unit of one layer)
    ("unsloth", "off"): (_OFF_PER_TOKEN * GIB / (MISTRAL_7B.num_hidden_layers * _UNITS), 0.0),
    ("unsloth", "true"): (_OFF_PER_TOKEN * GIB / (MISTRAL_7B.num_hidden_layers * _UNITS), 0.0),  # bounded by off
    ("unsloth", "unsloth"): (0.0, (MEASURED_PEAK_GIB["unsloth", "unsloth", 8192] - _OFF_FIXED) * GIB / (8192 * _UNITS)),
    ("hf", "true"): (_HF_PER_TOKEN * GIB / (MISTRAL_7B.num_hidden_layers * _UNITS), 0.0),
}
WORKSPACE_GIB = {"unsloth": _OFF_FIXED - _REFERENCE_STATES_GIB, "hf": _HF_FIXED - _REFERENCE_STATES_GIB}


def predicted_peak_gib(geometry: Geometry, *, backend: str, checkpointing: str, tokens: int, lora_r: int,
                       lora_targets: list[str], load_in_4bit: bool) -> float | None:
    """Peak memory of one training process, in GiB; None where no measurement covers the combination."""
    if (backend, checkpointing) not in PER_TOKEN_BYTES:
        return None
    per_layer_unit, per_unit = PER_TOKEN_BYTES[backend, checkpointing]
    units = geometry.hidden_size + geometry.intermediate_size
    activations = tokens * units * (per_layer_unit * geometry.num_hidden_layers + per_unit)
    states = geometry.weight_bytes(load_in_4bit=load_in_4bit) + geometry.lora_bytes(lora_r, lora_targets)
    return (activations + states) / GIB + WORKSPACE_GIB[backend]


def fits(predicted_gib: float | None, free_gib: float) -> bool:
    return predicted_gib is not None and MARGIN_FACTOR * predicted_gib + MARGIN_GIB <= free_gib


@dataclass(frozen=True)
class BatchPlan:
    """How one process runs its share of a step: what metadata.json records under `effective`."""
    per_device_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: str  # "off", "true" or "unsloth"
    processes: int  # the processes (all nodes) the step's rows are split over; effective.num_processes
    predicted_peak_gib: float | None
    free_memory_gib: float | None
    chosen_by: str  # "params" or "auto"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def fixed(cls, batch_size: int, accumulation: int, checkpointing: str) -> "BatchPlan":
        """A plan given outright, for one process (benchmarks that measure a chosen configuration)."""
        return cls(batch_size, accumulation, checkpointing, 1, None, None, "params")

    def shape(self) -> list:
        """What a resumed run must share with the run it resumes (the data position counts micro-batches)."""
        return [self.processes, self.per_device_batch_size, self.gradient_accumulation_steps,
                self.gradient_checkpointing]


class PlanError(ValueError):
    """train.rows_per_step / batch_size / gradient_checkpointing that cannot run as asked."""


def checkpointing_name(value: str | bool) -> str:
    """The param's value as a mode: "auto", "unsloth", "true" or "off"."""
    return {True: "true", False: "off"}.get(value, value) if isinstance(value, bool) else value


def plan_batches(*, backend: str, rows_per_step: int, processes: int, batch_size: int | str,
                 gradient_checkpointing: str | bool, tokens_per_row: int, geometry: Geometry | None,
                 free_gib: float | None, lora_r: int, lora_targets: list[str], load_in_4bit: bool) -> BatchPlan:
    """Micro-batch, accumulation and checkpointing for one process (a pure function: tested on a CPU)."""
    mode = checkpointing_name(gradient_checkpointing)
    if backend == "hf" and mode == "unsloth":
        raise PlanError("params.yaml: train.gradient_checkpointing=unsloth is Unsloth's offloaded checkpointing and "
                        "needs train.backend=unsloth; with hf use true (or auto)")
    if rows_per_step % processes:
        raise PlanError(f"params.yaml: train.rows_per_step={rows_per_step} does not split evenly over {processes} "
                        f"processes (train.num_processes x nodes); make it a multiple of {processes}")
    rows = rows_per_step // processes
    if batch_size != "auto" and rows % batch_size:
        raise PlanError(f"params.yaml: train.batch_size={batch_size} does not divide the {rows} rows each process "
                        f"trains per step (train.rows_per_step={rows_per_step} over {processes} processes); "
                        f"use a divisor of {rows}, or auto")
    sizes = [batch_size] if batch_size != "auto" else [n for n in range(rows, 0, -1) if rows % n == 0]
    saving = "unsloth" if backend == "unsloth" else "true"
    modes = ([saving] if backend == "hf" else ["off", saving]) if mode == "auto" else [mode]

    def predict(size: int, candidate: str) -> float | None:
        if geometry is None:
            return None
        return predicted_peak_gib(geometry, backend=backend, checkpointing=candidate, tokens=size * tokens_per_row,
                                  lora_r=lora_r, lora_targets=lora_targets, load_in_4bit=load_in_4bit)

    def plan(size: int, candidate: str) -> BatchPlan:
        chosen_by = "auto" if mode == "auto" or batch_size == "auto" else "params"
        return BatchPlan(size, rows // size, candidate, processes, _rounded(predict(size, candidate)),
                         _rounded(free_gib), chosen_by)

    if len(sizes) == 1 and len(modes) == 1:
        return plan(sizes[0], modes[0])
    if geometry is None or free_gib is None:
        raise PlanError("train.batch_size / train.gradient_checkpointing auto need the model's geometry and the "
                        "device's free memory; set both explicitly in params.yaml")
    if batch_size == "auto" and all(predict(1, candidate) is None for candidate in modes):
        raise PlanError(f"params.yaml: train.batch_size=auto has no measured memory model for train.backend={backend} "
                        f"with train.gradient_checkpointing={mode}; set train.batch_size")
    for candidate in modes:
        for size in sizes:
            if fits(predict(size, candidate), free_gib):
                return plan(size, candidate)
    smallest = plan(sizes[-1], modes[-1])
    print(f"train: warning: even {smallest.per_device_batch_size} row(s) of {tokens_per_row} tokens with gradient "
          f"checkpointing {smallest.gradient_checkpointing} are predicted to need {smallest.predicted_peak_gib} GiB "
          f"(+ margin) and {free_gib:.1f} GiB are free; trying it (lower model.max_seq_length if it runs out)")
    return smallest


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def free_memory_gib() -> float:
    """Free memory of the device this process trains on: its GPU, or on a CPU the RAM available to each
    of the node's processes."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / GIB
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        available_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))
    return available_kib * 1024 / GIB / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def plan_for_run(*, backend: str, model_params: dict, lora_params: dict, train_params: dict,
                 rows: list[dict[str, Any]]) -> BatchPlan:
    """The plan of this process: geometry from the model's config.json, free memory of its device, its
    share of the step. Under DDP every process plans alone; training.trainer checks they agree."""
    from transformers import AutoConfig

    from alpaca_qlora.modeling.offline_models import resolve_model_path
    from alpaca_qlora.training.launch import world_size

    config = AutoConfig.from_pretrained(resolve_model_path(model_params),
                                        trust_remote_code=model_params["trust_remote_code"])
    longest = max((len(row["input_ids"]) for row in rows), default=1)
    tokens_per_row = model_params["max_seq_length"] if train_params["packing"] else \
        min(longest, model_params["max_seq_length"])
    automatic = "auto" in (train_params["batch_size"], train_params["gradient_checkpointing"])
    try:
        geometry = Geometry.from_config(config, model_params["name"])
    except ValueError:
        if automatic:
            raise
        geometry = None  # nothing to choose: the plan is params.yaml's, only without a prediction
    return plan_batches(backend=backend, rows_per_step=train_params["rows_per_step"], processes=world_size(),
                        batch_size=train_params["batch_size"],
                        gradient_checkpointing=train_params["gradient_checkpointing"], tokens_per_row=tokens_per_row,
                        geometry=geometry, free_gib=free_memory_gib(), lora_r=lora_params["r"],
                        lora_targets=list(lora_params["target_modules"]), load_in_4bit=model_params["load_in_4bit"])
