"""Export a merged model (alpaca_qlora.cli.merge) to GGUF, for llama.cpp, Ollama and LM Studio.

    python -m alpaca_qlora.cli.merge --adapter models/adapter --out build/merged
    python -m alpaca_qlora.cli.gguf_export --merged build/merged --out build/model-q8_0.gguf --outtype q8_0

llama.cpp's converter (convert_hf_to_gguf.py, with its `conversion` package and the matching gguf-py) is
not a PyPI package of its own, but the source distribution of llama-cpp-python ships it, at the llama.cpp
commit that release vendors. This module fetches that sdist once with pip (`pip download --no-binary`,
nothing is built or installed), keeps the three converter pieces under build/gguf-converter/, and runs the
converter with this interpreter. Its types: f32, f16, bf16, q8_0 (the converter quantizes q8_0 itself).
K-quants such as Q4_K_M need llama.cpp's compiled `llama-quantize`; docs/using-the-adapter.md gives the commands.
The sdist (~77 MB) is kept in the user's cache (~/.cache/alpaca-qlora/, or $XDG_CACHE_HOME), checked
against its sha256, so it is downloaded once per machine.

Beside the GGUF file it writes an Ollama Modelfile (model-q8_0.gguf -> model-q8_0.Modelfile): the adapter's
own prompt template as a Go template (PromptTemplate.go_template: the instruction is Ollama's prompt, the
record's input its system message) and the stops where the adapter stops: EOS and the template's next
"### Instruction:". `ollama create alpaca-qlora -f build/model-q8_0.Modelfile`, then `ollama run alpaca-qlora`.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.errors import UserError, run_main
from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.files import atomic_write_bytes, file_sha256, read_json

# The llama-cpp-python release whose vendored llama.cpp converter was checked against our merged models
# (tests/test_gguf.py). A newer one may need a newer transformers; change it deliberately.
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_DIR = Path("build") / "gguf-converter"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
PIECES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def converter(root: Path = CONVERTER_DIR) -> Path:
    """llama.cpp's convert_hf_to_gguf.py (+ conversion/ and gguf-py/), fetched once from PyPI into `root`."""
    script = root / "convert_hf_to_gguf.py"
    if script.is_file() and (root / "gguf-py" / "gguf").is_dir() and (root / "conversion").is_dir():
        return script
    sdist = cached_sdist()
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch) / "converter"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers()
                       if "/vendor/llama.cpp/" in m.name
                       and m.name.split("/vendor/llama.cpp/", 1)[1].startswith(PIECES)]
            if not any(m.name.endswith("/convert_hf_to_gguf.py") for m in members):
                raise RuntimeError(f"{sdist.name} does not ship vendor/llama.cpp/convert_hf_to_gguf.py")
            for member in members:
                member.name = member.name.split("/vendor/llama.cpp/", 1)[1]
                archive.extract(member, staging, filter="data")
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(root))
    return script


def cached_sdist(cache: Path | None = None) -> Path:
    """The llama-cpp-python sdist from the user's cache, downloaded there with pip on first use."""
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alpaca-qlora"
    path = cache / SDIST
    if path.is_file() and file_sha256(path) == SDIST_SHA256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        progress.note(f"gguf: fetching llama.cpp's converter once, from the {LLAMA_CPP_PYTHON} sdist on PyPI (~77 MB)")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--dest", scratch, LLAMA_CPP_PYTHON], capture_output=True, text=True)
        if done.returncode != 0:
            reason = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
            raise UserError(f"pip download {LLAMA_CPP_PYTHON} failed ({reason[0].strip()}); connect to PyPI (or set "
                            f"PIP_INDEX_URL to a mirror), or copy {SDIST} into {cache} from a machine that has it")
        downloaded = Path(scratch) / SDIST
        if file_sha256(downloaded) != SDIST_SHA256:
            raise RuntimeError(f"{SDIST} from PyPI has sha256 {file_sha256(downloaded)}, not the pinned {SDIST_SHA256}")
        os.replace(downloaded, path)  # whole or absent: a killed download never leaves a partial file here
    return path


def ollama_modelfile(gguf_file: Path, merge_summary: dict) -> str:
    """The Modelfile text that runs `gguf_file` with the adapter's template and stops (see the docstring)."""
    template = PromptTemplate.from_dict(merge_summary["template"])
    body = template.go_template(input_free_variant=merge_summary["input_free_variant"])
    if '"""' in body:
        raise ValueError(f"template {template.name!r} contains three double quotes, which end an Ollama TEMPLATE")
    stops = [merge_summary["eos_token"], template.instruction_marker()]
    return "\n".join([
        f"# Ollama: ollama create alpaca-qlora -f {gguf_file.with_suffix('.Modelfile').name} (from this folder)",
        "# The instruction is the prompt; a record's input is the system message (/set system ... in ollama run).",
        f"FROM ./{gguf_file.name}", f'TEMPLATE """{body}"""',
        *[f"PARAMETER stop {json.dumps(stop)}" for stop in stops], ""])


def export_gguf(merged_dir: Path, out_file: Path, *, outtype: str = "q8_0",
                converter_dir: Path = CONVERTER_DIR) -> Path:
    """Convert a merged transformers folder (safetensors + tokenizer) to one GGUF file."""
    if outtype not in OUTTYPES:
        raise ValueError(f"--outtype must be one of {', '.join(OUTTYPES)} (K-quants: see docs/using-the-adapter.md), got {outtype!r}")
    check_merged_folder(merged_dir)
    if out_file.is_dir():
        raise UserError(f"--out {out_file} is a directory; give the .gguf file to write, e.g. {out_file}/model.gguf")
    script = converter(converter_dir)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(script.parent / "gguf-py"), str(script.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    status, output = run_converter([sys.executable, str(script), str(merged_dir), "--outfile", str(out_file),
                                    "--outtype", outtype], env, tensors=tensor_count(merged_dir))
    if status != 0 or not out_file.is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {merged_dir}:\n{output}")
    atomic_write_bytes(out_file.with_suffix(".Modelfile"),
                       ollama_modelfile(out_file, read_json(merged_dir / "merge.json")).encode("utf-8"))
    return out_file


def check_merged_folder(merged_dir: Path) -> None:
    """A folder of full weights written by alpaca_qlora.cli.merge; anything else is said to be what it is."""
    merge = f"python -m alpaca_qlora.cli.merge --adapter models/adapter --out {merged_dir}"
    if not merged_dir.exists():
        raise UserError(f"--merged {merged_dir} does not exist; make it first: {merge}")
    if not merged_dir.is_dir():
        raise UserError(f"--merged {merged_dir} is a file, not a model folder; give the folder that {merge} writes")
    if (merged_dir / "adapter_config.json").is_file():
        raise UserError(f"--merged {merged_dir} is an adapter, not a merged model (GGUF needs the full weights); "
                        f"merge it first: python -m alpaca_qlora.cli.merge --adapter {merged_dir} --out build/merged")
    if not (merged_dir / "config.json").is_file() or not any(merged_dir.glob("*.safetensors")):
        raise UserError(f"--merged {merged_dir} is not a merged model (no config.json or no *.safetensors); make it "
                        f"with: {merge}")


def tensor_count(merged_dir: Path) -> int:
    from safetensors import safe_open

    count = 0
    for path in merged_dir.glob("*.safetensors"):
        with safe_open(str(path), "np") as weights:
            count += len(list(weights.keys()))
    return count


def run_converter(command: list[str], env: dict[str, str], *, tensors: int) -> tuple[int, str]:
    """Run llama.cpp's converter; its log line per tensor, then its own "Writing" bar, drive our bars.

    Returns the exit status and the last lines of its output (for the error when it fails).
    """
    tail: collections.deque[str] = collections.deque(maxlen=40)
    converting = progress.bar(desc="gguf: converting", total=tensors, unit="tensor")
    writing = None
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        for line in process.stdout:  # text mode splits on the \r of the converter's bar as well
            tail.append(line.rstrip())
            if " --> " in line:  # "INFO:hf-to-gguf:blk.0.attn_q.weight, torch.bfloat16 --> Q8_0, shape = ..."
                converting.update(1)
            elif (percent := re.match(r"Writing:\s+(\d+)%", line)) is not None:
                if writing is None:
                    converting.close()
                    writing = progress.bar(desc="gguf: writing", total=100, unit="%")
                writing.update(int(percent.group(1)) - writing.n)
    converting.close()
    if writing is not None:
        writing.close()
    return process.returncode, "\n".join(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merged", type=Path, default=Path("build/merged"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--outtype", default="q8_0", choices=OUTTYPES)
    args = parser.parse_args()
    out = export_gguf(args.merged, args.out, outtype=args.outtype)
    print(progress.summary(f"gguf: wrote {out} ({args.outtype}) from {args.merged}; Ollama: ollama create "
                           f"alpaca-qlora -f {out.with_suffix('.Modelfile')}"))


if __name__ == "__main__":
    run_main(main)
