"""Model loading, one function per backend, for training and for evaluation.

`unsloth`: FastLanguageModel (4-bit, Unsloth kernels, gradient checkpointing "unsloth").
`hf`: transformers + bitsandbytes NF4 + peft. Both take the same params sections and return a PEFT model
and its tokenizer, so the stages never branch on the backend beyond calling these functions.
Unsloth patches transformers/TRL when imported, so callers import this module before TRL.

Security: weights are loaded from safetensors only (`use_safetensors=True`: a pickled pytorch_model.bin
from a remote repository is refused, never unpickled), and a repository's own Python code runs only when
`model.trust_remote_code` is true (default false).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alpaca_qlora.environment import check_before_loading, check_target_modules
from alpaca_qlora.offline import resolve_model_path
from alpaca_qlora.tokenizer import ensure_pad_token


def compute_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def lora_kwargs(lora_params: dict[str, Any]) -> dict[str, Any]:
    return dict(r=lora_params["r"], lora_alpha=lora_params["alpha"], lora_dropout=float(lora_params["dropout"]),
                target_modules=list(lora_params["target_modules"]), bias="none")


def load_for_training(backend: str, model_params: dict[str, Any], lora_params: dict[str, Any], *, seed: int):
    """4-bit base model with fresh LoRA adapters on it, ready for TRL's SFTTrainer."""
    loaders = {"unsloth": _unsloth_for_training, "hf": _hf_for_training}
    check_before_loading(backend, model_params)
    model, tokenizer = loaders[backend](resolve_model_path(model_params), model_params, lora_params, seed)
    return model, ensure_pad_token(tokenizer)


def _unsloth_base_model(path: str, model_params: dict[str, Any]):
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=model_params["max_seq_length"], dtype=None,
        load_in_4bit=model_params["load_in_4bit"], use_safetensors=True,
        trust_remote_code=model_params.get("trust_remote_code", False))


def _unsloth_for_training(path, model_params, lora_params, seed):
    from unsloth import FastLanguageModel

    from alpaca_qlora.packed_attention import enable_unsloth_packed_flash_attention

    enable_unsloth_packed_flash_attention()
    model, tokenizer = _unsloth_base_model(path, model_params)
    check_target_modules(model, lora_params["target_modules"], model_params["name"])
    model = FastLanguageModel.get_peft_model(
        model, **lora_kwargs(lora_params), use_gradient_checkpointing="unsloth", random_state=seed,
        max_seq_length=model_params["max_seq_length"])
    return model, tokenizer


def _hf_base_model(path: str, model_params: dict[str, Any]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = None
    if model_params["load_in_4bit"]:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype())
    trust = model_params.get("trust_remote_code", False)
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=compute_dtype(), use_safetensors=True,
        trust_remote_code=trust,
        # Under torchrun / accelerate launch each data-parallel rank holds a whole copy on its own GPU.
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else None)
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=trust)


def _hf_for_training(path, model_params, lora_params, seed):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from alpaca_qlora.trl_cpu import use_torch_loss_on_cpu

    use_torch_loss_on_cpu()
    model, tokenizer = _hf_base_model(path, model_params)
    check_target_modules(model, lora_params["target_modules"], model_params["name"])
    if model_params["load_in_4bit"]:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    torch.manual_seed(seed)  # LoRA's A matrices are drawn from the global generator
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(lora_params)))
    return model, tokenizer


def load_base_for_evaluation(backend: str, model_params: dict[str, Any]):
    """The 4-bit base model alone, in eval mode, through the same backend that trained the adapter."""
    check_before_loading(backend, model_params)
    path = resolve_model_path(model_params)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = _unsloth_base_model(path, model_params)
        FastLanguageModel.for_inference(model)
    else:
        model, tokenizer = _hf_base_model(path, model_params)
    model.eval()
    return model, ensure_pad_token(tokenizer)


def attach_adapter(model, backend: str, adapter_dir: Path):
    """Base model + trained LoRA adapter, in eval mode.

    Base metrics are measured before this call rather than through `disable_adapter()`, because
    Unsloth's fused LoRA kernels are not guaranteed to honour that switch.
    """
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{adapter_dir}/adapter_model.safetensors not found: only safetensors adapters "
                                "are loaded (never a pickled adapter_model.bin); rerun the train stage")
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    return model


def load_base_16bit(model_params: dict[str, Any], *, dequantize_4bit: bool):
    """The base model in 16-bit (float32 on a CPU), unquantized, for merging an adapter into it.

    `dequantize_4bit`: load it in 4-bit NF4 exactly as training did (`_hf_base_model`), then dequantize,
    so the weights are the ones the adapter was trained against. Otherwise load the checkpoint's own
    16-bit weights; a pre-quantized checkpoint has none, which is refused rather than silently merged.
    See alpaca_qlora/merge.py for why the choice matters.
    """
    from transformers import AutoConfig

    path = resolve_model_path(model_params)
    if dequantize_4bit:
        model, tokenizer = _hf_base_model(path, {**model_params, "load_in_4bit": True})
        return model.dequantize(dtype=compute_dtype()), tokenizer
    if getattr(AutoConfig.from_pretrained(path), "quantization_config", None):
        raise ValueError(f"model.name {model_params['name']!r} is a pre-quantized checkpoint with no 16-bit "
                         "weights: merge with --base-weights dequantized, or name its 16-bit original with --base")
    model, tokenizer = _hf_base_model(path, {**model_params, "load_in_4bit": False})
    return model, tokenizer
