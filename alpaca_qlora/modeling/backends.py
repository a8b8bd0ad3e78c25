"""The backend rule, in one place: which library loads the base model and the adapter.

`unsloth`: FastLanguageModel (4-bit, Unsloth kernels, its offloaded gradient checkpointing when needed).
`hf`: transformers + bitsandbytes NF4 + peft.
Both take the same params sections and return a PEFT model and its tokenizer, so stages, tools and
benchmarks never branch on the backend: they call `backends.get(name)` and use what it returns. Unsloth
patches transformers, peft and TRL when imported, so it must be imported before any of them: `get` does
that, which is why callers call it before importing TRL.

Security: weights are loaded from safetensors only (`use_safetensors=True`: a pickled pytorch_model.bin
from a remote repository is refused, never unpickled), and a repository's own Python code runs only when
`model.trust_remote_code` is true (default false).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alpaca_qlora.modeling.adapter import check_adapter_folder
from alpaca_qlora.modeling.compile_caches import use_project_caches
from alpaca_qlora.modeling.offline_models import resolve_model_path
from alpaca_qlora.modeling.preflight import (EnvironmentProblem, check_backend_device, check_before_loading,
                                             check_model_reachable, check_target_modules)
from alpaca_qlora.modeling.tokenizer import ensure_pad_token

NAMES = ("unsloth", "hf")


def get(name: str, *, model_name: str | None = None) -> "Backend":
    """The backend called `name` (train.backend). For "unsloth", Unsloth is imported here, first.

    With `model_name`, this machine is first checked to be able to run it (check_backend_device), before
    the seconds that importing Unsloth takes. The compilers' caches are pointed at build/compile-cache/
    first, so a rerun skips the compilation.
    """
    if model_name is not None:
        check_backend_device(name, model_name)
    use_project_caches()
    if name == "unsloth":
        import unsloth  # noqa: F401  (patches transformers, peft and TRL: must come before them)

        return Unsloth()
    return HF()


def compute_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def lora_kwargs(lora_params: dict[str, Any]) -> dict[str, Any]:
    """PEFT's LoraConfig arguments; Unsloth's get_peft_model takes the same names."""
    return dict(r=lora_params["r"], lora_alpha=lora_params["alpha"], lora_dropout=float(lora_params["dropout"]),
                target_modules=list(lora_params["target_modules"]), bias="none",
                use_rslora=lora_params["use_rslora"])


def effective_lora(model) -> dict[str, Any]:
    """What the built adapter really uses: rsLoRA on or off, and the scale its LoRA layers apply."""
    config = model.peft_config["default"]
    scales = {module.scaling["default"] for module in model.modules()
              if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling}
    return {"use_rslora": bool(config.use_rslora), "lora_scaling": sorted(scales)}


class Backend:
    name: str
    saving_checkpointing: str  # the gradient checkpointing that saves the most memory

    def load_for_training(self, model_params: dict[str, Any], lora_params: dict[str, Any], *, seed: int,
                          gradient_checkpointing: str | None = None):
        """4-bit base model with fresh LoRA adapters on it, ready for TRL's SFTTrainer.

        `gradient_checkpointing`: "off", "true" or "unsloth" (training.memory decides it; None: the backend's
        memory-saving default, "unsloth" or "true"). The SFTConfig must say the same (training.trainer).
        """
        check_before_loading(self.name, model_params)
        model, tokenizer = self._base(resolve_model_path(model_params), model_params)
        check_target_modules(model, lora_params["target_modules"], model_params["name"])
        mode = gradient_checkpointing or self.saving_checkpointing
        return self._add_lora(model, model_params, lora_params, seed, mode), ensure_pad_token(tokenizer)

    def load_for_inference(self, model_params: dict[str, Any]):
        """The 4-bit base model alone, in eval mode: what the adapter was trained on."""
        check_before_loading(self.name, model_params)
        model, tokenizer = self._base(resolve_model_path(model_params), model_params)
        self._inference_mode(model)
        return model, ensure_pad_token(tokenizer)

    def attach_adapter(self, model, adapter_dir: Path):
        """Base model + trained LoRA adapter, in eval mode; safetensors adapters only.

        Base metrics are measured before this call rather than through `disable_adapter()`, because
        Unsloth's fused LoRA kernels are not guaranteed to honour that switch.
        """
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(check_adapter_folder(adapter_dir)))
        self._inference_mode(model)
        return model

    def _base(self, path: str, model_params: dict[str, Any]):
        raise NotImplementedError

    def _add_lora(self, model, model_params, lora_params, seed, gradient_checkpointing):
        raise NotImplementedError

    def _inference_mode(self, model) -> None:
        model.eval()


class Unsloth(Backend):
    name, saving_checkpointing = "unsloth", "unsloth"

    def _base(self, path, model_params):
        from unsloth import FastLanguageModel

        return FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=model_params["max_seq_length"], dtype=None,
            load_in_4bit=model_params["load_in_4bit"], use_safetensors=True,
            trust_remote_code=model_params["trust_remote_code"])

    def _add_lora(self, model, model_params, lora_params, seed, gradient_checkpointing):
        from unsloth import FastLanguageModel

        use = {"off": False, "true": True, "unsloth": "unsloth"}[gradient_checkpointing]
        return FastLanguageModel.get_peft_model(
            model, **lora_kwargs(lora_params), use_gradient_checkpointing=use, random_state=seed,
            max_seq_length=model_params["max_seq_length"])

    def _inference_mode(self, model) -> None:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
        model.eval()


class HF(Backend):
    name, saving_checkpointing = "hf", "true"

    def _base(self, path, model_params):
        return load_transformers_model(path, model_params)

    def _add_lora(self, model, model_params, lora_params, seed, gradient_checkpointing):
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if gradient_checkpointing == "unsloth":
            raise ValueError("gradient checkpointing 'unsloth' needs train.backend=unsloth")
        if model_params["load_in_4bit"]:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing == "true")
        torch.manual_seed(seed)  # LoRA's A matrices are drawn from the global generator
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(lora_params)))


def load_transformers_model(path: str, model_params: dict[str, Any]):
    """Plain transformers (+ bitsandbytes NF4 when model.load_in_4bit): the `hf` backend's loader."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = None
    if model_params["load_in_4bit"]:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype())
    trust = model_params["trust_remote_code"]
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=compute_dtype(), use_safetensors=True,
        trust_remote_code=trust,
        # Under torchrun / accelerate launch each data-parallel rank holds a whole copy on its own GPU.
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else None)
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=trust)


def load_for_merge(model_params: dict[str, Any], *, dequantize_4bit: bool):
    """The base model in 16-bit (float32 on a CPU), unquantized, for merging an adapter into it.

    Always through plain transformers, whichever backend trained the adapter: a LoRA adapter is the same
    file for both, and the merged model must load anywhere without Unsloth.
    `dequantize_4bit`: load it in 4-bit NF4 exactly as training did, then dequantize, so the weights are
    the ones the adapter was trained against. Otherwise load the checkpoint's own 16-bit weights; a
    pre-quantized checkpoint has none, which is refused rather than silently merged.
    See alpaca_qlora/cli/merge.py for why the choice matters.
    """
    from transformers import AutoConfig

    check_model_reachable(model_params["name"])
    path = resolve_model_path(model_params)
    if dequantize_4bit:
        model, tokenizer = load_transformers_model(path, {**model_params, "load_in_4bit": True})
        return model.dequantize(dtype=compute_dtype()), tokenizer
    if getattr(AutoConfig.from_pretrained(path), "quantization_config", None):
        raise EnvironmentProblem(f"{model_params['name']!r} is a pre-quantized checkpoint with no 16-bit weights; "
                                 "merge with --base-weights dequantized, or name its 16-bit original with --base")
    return load_transformers_model(path, {**model_params, "load_in_4bit": False})
