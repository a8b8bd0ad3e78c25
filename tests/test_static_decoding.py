"""Static-cache greedy decoding gives, token for token, what transformers' own `generate` gives.

On a CPU the loop runs without the CUDA graph; the graph replays exactly this step on a GPU (the benchmark
measures both there). Left padding, rows of different lengths, and EOS in the middle are all covered."""
from __future__ import annotations

import pytest
import torch

from alpaca_qlora.evaluation.static_decoding import greedy_decode

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def model():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=None, eos_token_id=EOS,
                           bos_token_id=1, pad_token_id=PAD)
    return MistralForCausalLM(config).eval()


def left_padded(rows: list[list[int]]):
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def reference(model, ids, mask, max_new_tokens):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=EOS, pad_token_id=PAD)[:, ids.shape[1]:]
    rows = []
    for row in out.tolist():
        rows.append(row[:row.index(EOS) + 1] if EOS in row else row)
    return rows


def test_static_decoding_matches_generate_on_a_left_padded_batch(model):
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 96, (n,), generator=generator).tolist() for n in (5, 17, 9, 1)]
    ids, mask = left_padded(rows)
    expected = reference(model, ids, mask, 12)
    decoded = greedy_decode(model, ids, mask, max_new_tokens=12, eos_token_id=EOS, check_every=4)
    assert [d.token_ids for d in decoded] == expected
    assert [d.stopped_at_eos for d in decoded] == [EOS in row for row in expected]
    assert sum(len(row) for row in expected) > 20, "the rows run long enough to mean something"
    alone = [greedy_decode(model, *left_padded([r]), max_new_tokens=12, eos_token_id=EOS)[0].token_ids for r in rows]
    assert alone == expected, "padding and batch neighbours change nothing"


def test_rows_stop_at_their_own_eos_and_the_loop_ends_when_all_have(model):
    """EOS forced as the 3rd new token of row 0 and the 6th of row 1 (through the LM head's output)."""
    ids, mask = left_padded([[5, 6, 7], [8, 9, 10, 11, 12]])
    calls = []

    def force(module, inputs, output):
        calls.append(1)  # one call for the prefill, then one per decode step
        output = output.clone()
        if len(calls) == 3:
            output[0, -1, EOS] = output.max() + 100
        if len(calls) == 6:
            output[1, -1, EOS] = output.max() + 100
        return output

    hook = model.get_output_embeddings().register_forward_hook(force)
    try:
        decoded = greedy_decode(model, ids, mask, max_new_tokens=40, eos_token_id=EOS, check_every=2)
    finally:
        hook.remove()
    assert [len(d.token_ids) for d in decoded] == [3, 6] and all(d.stopped_at_eos for d in decoded)
    assert [d.token_ids[-1] for d in decoded] == [EOS, EOS]
    assert len(calls) <= 8, f"{len(calls)} forward passes: the loop went on after every row had stopped"
