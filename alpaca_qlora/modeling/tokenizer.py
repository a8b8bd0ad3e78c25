"""The base model's tokenizer, shared by the format, train and evaluate stages."""
from __future__ import annotations

from typing import Any

from alpaca_qlora.modeling.offline_models import resolve_model_path


def load_tokenizer(model_params: dict[str, Any]):
    """The tokenizer of `model.name` (hub id, local directory or offline:<preset>), padded safely."""
    from alpaca_qlora.modeling.preflight import EnvironmentProblem, check_model_reachable

    check_model_reachable(model_params["name"])  # name the id and HF_HUB_OFFLINE, not a hub stack trace
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_params))
    if tokenizer.eos_token_id is None:
        raise EnvironmentProblem(f"params.yaml: model.name={model_params['name']!r} has a tokenizer without an EOS "
                                 "token, so rows could never teach the model to stop; use a model whose tokenizer "
                                 "defines eos_token")
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer):
    """Give the tokenizer a pad token that is not EOS, and pad on the right for training.

    Padding with EOS is the classic way to train a model that never stops: collators that mask pad ids
    then mask every EOS label too. Mistral has no pad token, so <unk> is used, as Unsloth does.
    """
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is None:
            from alpaca_qlora.modeling.preflight import EnvironmentProblem

            raise EnvironmentProblem(f"the tokenizer of {tokenizer.name_or_path!r} has neither a pad token nor an "
                                     "unk token to pad with; use a model whose tokenizer defines one of them")
        tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer
