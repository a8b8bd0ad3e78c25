"""Offline base models: a small random-init Mistral-architecture model plus the real Mistral v0.2 tokenizer.

The Hugging Face hub is unreachable on CI and on many users' first try. A model named "offline:<preset>"
in params.yaml is built here deterministically from `model.offline_seed`, saved under build/offline-models/,
and then loaded through exactly the same code path as a hub model (4-bit, LoRA, TRL). The tokenizer is the
genuine Mistral v0.2 SentencePiece model that the `mistral-common` package ships, so token counts, EOS
handling and truncation behave as they do with the real model.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from alpaca_qlora.errors import UserError
from alpaca_qlora.params import ParamsError

OFFLINE_PREFIX = "offline:"
OFFLINE_MODELS_DIR = Path("build") / "offline-models"

# Mistral-7B-v0.2 geometry, scaled down. vocab_size must stay 32000 to match the real tokenizer.
PRESETS = {
    "tiny-mistral": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1),
    "mistral-7b-geometry": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8),
}


def is_offline(name: str) -> bool:
    return name.startswith(OFFLINE_PREFIX)


def mistral_tokenizer_file() -> Path:
    """The Mistral v0.2 SentencePiece model shipped inside the mistral-common package."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise UserError(f"{path} not found: the installed mistral-common does not ship the v1 tokenizer; "
                        "install the version pinned in requirements.txt (`make install`)")
    return path


def build_offline_model(name: str, *, seed: int, root: Path = OFFLINE_MODELS_DIR) -> Path:
    """Build (once) and return the local directory of offline model `name`, e.g. "offline:tiny-mistral".

    Same name and seed give the same weights; the folder is a cache, safe to delete.
    """
    preset = name[len(OFFLINE_PREFIX):]
    if preset not in PRESETS:
        raise ParamsError(f"params.yaml: model.name={name!r} is not an offline model; use one of "
                          + ", ".join(OFFLINE_PREFIX + p for p in PRESETS))
    target = root / f"{preset}-seed{seed}"
    if (target / "config.json").is_file() and (target / "tokenizer.model").is_file():
        return target

    import torch
    from transformers import LlamaTokenizer, MistralConfig, MistralForCausalLM

    # One staging folder per process: data-parallel ranks (alpaca_qlora/training/distributed.py) may build at once.
    staging = root / f".{preset}-seed{seed}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(mistral_tokenizer_file(), staging / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(str(staging), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(str(staging))

    config = MistralConfig(vocab_size=len(tokenizer), max_position_embeddings=32768, rope_theta=1e6,
                           sliding_window=None, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, **PRESETS[preset])
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() and preset != "tiny-mistral" else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = MistralForCausalLM(config).to(dtype)
    model.save_pretrained(str(staging), safe_serialization=True)
    try:
        staging.rename(target)  # atomic: a crash never leaves a half-built model behind
    except OSError:  # another process finished first; same name and seed, so the same weights
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(model_params: dict) -> str:
    """A hub id or local directory as given; an offline:<preset> name built (once) into a local folder."""
    name = model_params["name"]
    if is_offline(name):
        return str(build_offline_model(name, seed=model_params["offline_seed"]))
    return name
