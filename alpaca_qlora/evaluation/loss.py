"""Held-out loss and perplexity of the responses, prompt masked as in training, the same way for every backend."""
from __future__ import annotations

import math
from typing import Any

from alpaca_qlora import progress


def heldout_loss(model, rows: list[dict[str, Any]], *, batch_size: int, pad_token_id: int) -> dict[str, float]:
    """Token-weighted mean NLL of the responses (EOS included) given their prompts, and its perplexity.

    The prompt is masked exactly as in training with train_on_prompt=false, so the figure says how well
    the model answers, not how well it predicts the fixed template text.
    """
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in progress.bar(range(0, len(rows), batch_size), desc="evaluate: held-out loss", unit="batch"):
            batch = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, row in enumerate(batch):
                ids = torch.tensor(row["input_ids"])
                input_ids[i, :len(ids)], attention[i, :len(ids)] = ids, 1
                mask = torch.tensor(row["completion_mask"], dtype=torch.bool)
                labels[i, :len(ids)] = torch.where(mask, ids, torch.tensor(-100))
            scored = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one
            out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        labels=labels.to(device))
            total_nll += float(out.loss) * scored
            total_tokens += scored
    loss = total_nll / total_tokens
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 700.0)), 4), "tokens": total_tokens}
