"""GGUF export: llama.cpp's own converter (from the llama-cpp-python sdist on PyPI) on the merged model.

The file is read back with the converter's gguf-py (the llama architecture and Mistral tokenizer metadata,
every tensor equal to the merged weights: exactly in f32, within Q8_0's rounding in q8_0) and run by
llama.cpp itself, prebuilt in the xllamacpp wheel from PyPI: greedy generation from the GGUF, given the
prompt's token ids, equals transformers' greedy generation from the merged model. The Ollama Modelfile written beside it is rendered
with Go's text/template (Ollama's engine; Debian's golang-go, which .ci/ installs) and must give, for the
same record, the prompt the format stage trained on.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_qlora.cli.gguf_export import ollama_modelfile
from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.modeling.adapter import AdapterMetadata

RENDER_GO = Path(__file__).parent / "gotemplate" / "render.go"
RECORDS = [{"instruction": "Add the two numbers.", "input": "48 and 52"},
           {"instruction": "Give three tips for staying healthy.", "input": ""}]


@pytest.fixture(scope="module")
def exported(reproduced_workspace, tmp_path_factory):
    from alpaca_qlora.cli.gguf_export import cached_sdist, export_gguf
    from alpaca_qlora.cli.merge import merge_adapter

    out = tmp_path_factory.mktemp("gguf")
    cwd = os.getcwd()
    os.chdir(reproduced_workspace)  # the offline base is built under build/ there
    try:
        merge_adapter(reproduced_workspace / "models/adapter", out / "merged", save_dtype="float32")
        cached = os.stat(cached_sdist()).st_mtime_ns  # downloaded here on a machine's first run
        files = {kind: export_gguf(out / "merged", out / f"model-{kind}.gguf", outtype=kind,
                                   converter_dir=out / "converter") for kind in ("f32", "q8_0")}
        assert os.stat(cached_sdist()).st_mtime_ns == cached, "the converter's sdist came from the user cache"
        sys.path.insert(0, str(out / "converter/gguf-py"))
        from gguf import GGUFReader
        from gguf.quants import dequantize
    finally:
        os.chdir(cwd)
    return out / "merged", {kind: GGUFReader(str(path)) for kind, path in files.items()}, dequantize, files


def merged_weights(merged_dir):
    from safetensors.torch import load_file

    return {name: tensor.numpy() for name, tensor in load_file(str(merged_dir / "model.safetensors")).items()}


def test_gguf_says_llama_architecture_with_the_mistral_tokenizer(exported):
    _, readers, _, _ = exported
    fields = readers["f32"].fields
    assert fields["general.architecture"].contents() == "llama" and fields["llama.block_count"].contents() == 2
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 32000
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2


def test_gguf_tensors_are_the_merged_weights(exported):
    import numpy as np

    merged_dir, readers, dequantize, _ = exported
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


def go_render(template: str, records: list[dict]) -> list[str]:
    """`template` rendered by Go's text/template for each record: instruction as .Prompt, input as .System."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("go is not installed: .ci/install-remote-test-deps.sh installs Debian's golang-go")
        pytest.skip("go is not installed (apt-get install golang-go); CI installs it and runs this test")
    values = [{"Prompt": r["instruction"], "System": r["input"]} for r in records]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alpaca-qlora" / "go-build"
    done = subprocess.run([go, "run", str(RENDER_GO)], input=json.dumps({"template": template, "values": values}),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GOCACHE": str(cache), "GO111MODULE": "off", "GOFLAGS": ""})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def modelfile_parts(text: str) -> tuple[str, str, list[str]]:
    """(FROM, TEMPLATE, stops) of a Modelfile."""
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    source = next(line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("FROM "))
    stops = [json.loads(line.split(" ", 2)[2]) for line in text.splitlines() if line.startswith("PARAMETER stop ")]
    return source, template, stops


def test_ollama_modelfile_renders_the_training_prompt_and_stops_where_the_adapter_stops(exported,
                                                                                      reproduced_workspace):
    *_, files = exported
    modelfile = files["q8_0"].with_suffix(".Modelfile")
    source, template, stops = modelfile_parts(modelfile.read_text())
    assert (modelfile.parent / source).resolve() == files["q8_0"].resolve()
    assert stops == ["</s>", "### Instruction:"]
    render = AdapterMetadata.read(reproduced_workspace / "models/adapter").prompt_renderer()
    expected = [render(r["instruction"], r["input"]) for r in RECORDS]
    assert go_render(template, RECORDS) == expected
    assert "### Input:\n\n\n### Response:\n" in expected[1], "the seed's one template: an empty Input block"


def test_ollama_template_keeps_the_stanford_variant_rule_except_for_blank_inputs():
    """format.input_free_variant: true. Go's `if` cannot strip, so an input of spaces only differs (documented)."""
    template = PromptTemplate.load("alpaca")
    summary = {"template": template.as_dict(), "input_free_variant": True, "eos_token": "</s>"}
    _, go_template, _ = modelfile_parts(ollama_modelfile(Path("build/model-q8_0.gguf"), summary))
    blank = {"instruction": "Name a colour.", "input": "  "}
    rendered = go_render(go_template, RECORDS + [blank])
    assert rendered[:2] == [template.render_prompt(r, input_free_variant=True) for r in RECORDS]
    assert "### Input:" not in rendered[1]
    assert rendered[2] != template.render_prompt(blank, input_free_variant=True) and "### Input:" in rendered[2]


def test_llama_cpp_runs_the_gguf_and_generates_what_transformers_generates(exported, reproduced_workspace):
    """llama.cpp (xllamacpp's prebuilt CPU build) loads the f32 GGUF and, from the training tokenizer's ids
    of a prompt, greedy-decodes the merged model's text.

    The ids are given, not the text: on the offline profile llama.cpp's own tokenizer (from the GGUF) splits
    a few words of the template differently from the tokenizer training used ("paired": `▁pair ed` against
    `▁pa ired`), docs/using-the-adapter.md.
    """
    import torch
    import xllamacpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir, _, _, files = exported
    prompt = AdapterMetadata.read(reproduced_workspace / "models/adapter").prompt_renderer()(*RECORDS[0].values())
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    ids = tokenizer(prompt).input_ids
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)[0, len(ids):]
    new = new.tolist()
    stopped = tokenizer.eos_token_id in new
    expected = tokenizer.decode(new[:new.index(tokenizer.eos_token_id)] if stopped else new, skip_special_tokens=True)

    params = xllamacpp.CommonParams()
    params.model.path = str(files["f32"])
    params.n_ctx = 512
    params.cpuparams.n_threads = 2
    result = xllamacpp.Server(params).handle_completions(
        {"prompt": ids, "max_tokens": 12, "temperature": 0.0, "top_k": 1, "seed": 0})
    assert "error" not in result, result
    (choice,) = result["choices"]
    assert result["usage"]["prompt_tokens"] == len(ids)
    assert choice["text"].strip() == expected.strip() and expected.strip(), (choice, expected, new)
    assert choice["finish_reason"] == ("stop" if stopped else "length"), (choice, new)
