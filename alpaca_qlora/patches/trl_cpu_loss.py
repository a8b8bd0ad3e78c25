"""TRL's loss kernel in plain PyTorch on a CPU: TRL 1.15's SFTTrainer computes the loss with a Triton kernel.

On a CPU (the offline profile, CI) the `hf` backend would stop at that kernel. This swaps in the same
computation in plain PyTorch: log-probabilities of the targets (the loss), and the logging-only extras
TRL asks for (entropy, top-1 accuracy). Unsloth brings its own CPU path and does not need it. Used only
when no GPU is present; on a GPU TRL's kernel runs untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class TorchChunkedLogProb:
    """Drop-in for trl.kernels.ChunkedLogProbFunction: same arguments, same 5 outputs."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        import torch
        import torch.nn.functional as F

        logits = F.linear(hidden, weight, bias).float() * logit_scale
        if final_logit_softcapping:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_softmax = torch.log_softmax(logits, dim=-1)
        log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            probs = log_softmax.exp()
            entropy = -(probs * log_softmax).sum(-1) if "entropy" in outputs else None
            log_sum_sq = torch.log((probs * probs).sum(-1)) if "log_sum_sq_probs" in outputs else None
            mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
            is_top1 = (logits.argmax(-1) == targets).float() if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


@contextmanager
def applied() -> Iterator[str]:
    """On a CPU, TRL's `trl.trainer.utils._ChunkedLogProbFunction` is TorchChunkedLogProb until exit."""
    import torch
    import trl.trainer.utils as trl_utils

    if torch.cuda.is_available():
        yield "not applied (CUDA: TRL's Triton kernel)"
        return
    original = trl_utils._ChunkedLogProbFunction
    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
    try:
        yield "applied (CPU: TRL's chunked log-prob kernel replaced by plain PyTorch)"
    finally:
        trl_utils._ChunkedLogProbFunction = original
