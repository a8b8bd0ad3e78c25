"""GGUF export: llama.cpp's own converter (from the llama-cpp-python sdist on PyPI) on the merged model.

No llama.cpp binary is built here, so the check is on the file itself, read back with the converter's gguf-py:
the llama architecture and Mistral tokenizer metadata, and every tensor equal to the merged weights
(exactly in f32, within Q8_0's rounding in q8_0).
"""
from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="module")
def exported(reproduced_workspace, tmp_path_factory):
    import os

    from alpaca_qlora.cli.gguf_export import export_gguf
    from alpaca_qlora.cli.merge import merge_adapter

    out = tmp_path_factory.mktemp("gguf")
    cwd = os.getcwd()
    os.chdir(reproduced_workspace)  # the offline base is built under build/ there
    try:
        merge_adapter(reproduced_workspace / "models/adapter", out / "merged", save_dtype="float32")
        files = {kind: export_gguf(out / "merged", out / f"model-{kind}.gguf", outtype=kind,
                                   converter_dir=out / "converter") for kind in ("f32", "q8_0")}
        sys.path.insert(0, str(out / "converter/gguf-py"))
        from gguf import GGUFReader
        from gguf.quants import dequantize
    finally:
        os.chdir(cwd)
    return out / "merged", {kind: GGUFReader(str(path)) for kind, path in files.items()}, dequantize


def merged_weights(merged_dir):
    from safetensors.torch import load_file

    return {name: tensor.numpy() for name, tensor in load_file(str(merged_dir / "model.safetensors")).items()}


def test_gguf_says_llama_architecture_with_the_mistral_tokenizer(exported):
    _, readers, _ = exported
    fields = readers["f32"].fields
    assert fields["general.architecture"].contents() == "llama" and fields["llama.block_count"].contents() == 2
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 32000
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2


def test_gguf_tensors_are_the_merged_weights(exported):
    import numpy as np

    merged_dir, readers, dequantize = exported
    weights = merged_weights(merged_dir)
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
             "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight"}
    f32 = {tensor.name: tensor for tensor in readers["f32"].tensors}
    q8 = {tensor.name: tensor for tensor in readers["q8_0"].tensors}
    assert len(f32) == len(weights) == len(q8) == 21
    for gguf_name, hf_name in pairs.items():
        expected = weights[hf_name]
        assert np.array_equal(np.asarray(f32[gguf_name].data).reshape(expected.shape), expected), gguf_name
        tensor = q8[gguf_name]
        assert tensor.tensor_type.name == "Q8_0", gguf_name
        restored = dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        scale = np.abs(expected).max()
        assert np.abs(restored - expected).max() <= scale / 127 + 1e-6, gguf_name  # one int8 step at most
    # q_proj / k_proj are permuted by the converter for llama.cpp's rotary layout: same values, reordered.
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    got = np.asarray(f32["blk.0.attn_q.weight"].data).reshape(q.shape)
    assert not np.array_equal(got, q) and np.array_equal(np.sort(got, axis=None), np.sort(q, axis=None))
