"""Checks alpaca_qlora.patches.packed_attention on the GPU: one flash call over packed segments == one SDPA call
per segment, forward and backward, with Mistral's GQA shapes (32 query heads, 8 key/value heads, dim 128).

    python3 -m benchmarks.packed_attention_probe      # GPU machine; prints the status and the differences
"""
import json
import time

import torch

import unsloth  # noqa: F401  (before the dispatch module, as in training)
import unsloth.utils.attention_dispatch as dispatch
from alpaca_qlora.patches import packed_attention

patch = packed_attention.applied()
status = patch.__enter__()  # for the rest of this script
torch.manual_seed(0)
lengths = [200, 180, 300, 250, 190, 400, 220, 210, 98]
total, heads, kv_heads, dim = sum(lengths), 32, 8, 128
q = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device="cuda", dtype=torch.int32)
grad = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16)


def packed():
    return dispatch._varlen_attn_call(q, k, v, cu, max(lengths), scale=None, window_size=(-1, 0), enable_gqa=True)


def per_segment():
    outs, start = [], 0
    for length in lengths:
        part = slice(start, start + length)
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q[part].transpose(0, 1), k[part].transpose(0, 1), v[part].transpose(0, 1), is_causal=True,
            enable_gqa=True).transpose(0, 1))
        start += length
    return torch.cat(outs)


results = {"status": status, "torch": torch.__version__}
for name, fn in (("packed", packed), ("per_segment", per_segment)):
    out = fn()
    out.backward(grad)
    results[name] = {"out": out.detach().float(), "grads": [t.grad.float().clone() for t in (q, k, v)]}
    for t in (q, k, v):
        t.grad = None
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(20):
        fn().backward(grad)
    torch.cuda.synchronize()
    results[name]["ms_fwd_bwd"] = round((time.perf_counter() - started) / 20 * 1000, 3)
    for t in (q, k, v):
        t.grad = None
report = {"status": status, "torch": torch.__version__,
          "max_abs_diff_out": (results["packed"]["out"] - results["per_segment"]["out"]).abs().max().item(),
          "max_abs_diff_grads_qkv": [(a - b).abs().max().item() for a, b in
                                     zip(results["packed"]["grads"], results["per_segment"]["grads"])],
          "max_abs_out": results["per_segment"]["out"].abs().max().item(),
          "ms_fwd_bwd": {name: results[name]["ms_fwd_bwd"] for name in ("packed", "per_segment")}}
print(json.dumps(report))
