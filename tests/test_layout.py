"""The house rules that keep the layout honest: dvc.yaml's deps are what each stage imports, stage scripts
stay orchestration, the package has no import cycle and no oversized module, and a stage module imports no
heavy library before it chose its backend (Unsloth must come before transformers, peft and TRL)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.imports import ROOT, imported_names, module_file, package_files_imported_by

DVC_YAML = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())
STAGES = sorted(DVC_YAML["stages"])


def stage_script(stage: str) -> Path:
    command = DVC_YAML["stages"][stage]["cmd"].split()
    return ROOT / (command[command.index("-m") + 1].replace(".", "/") + ".py")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_exactly_the_package_files_it_imports(stage):
    """A change to a module reruns the stages that use it, and only those."""
    script = stage_script(stage)
    declared = {dep for dep in DVC_YAML["stages"][stage]["deps"] if dep.startswith("alpaca_qlora/")}
    needed = package_files_imported_by(script)
    assert str(script.relative_to(ROOT)) in DVC_YAML["stages"][stage]["deps"], "the stage's own script"
    assert declared == needed, (f"dvc.yaml stage {stage!r}: missing {sorted(needed - declared)}, "
                                f"not imported {sorted(declared - needed)}")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_scripts_are_orchestration(stage):
    lines = stage_script(stage).read_text().splitlines()
    assert len(lines) <= 80, f"{stage_script(stage)} has {len(lines)} lines: move the logic into the package"


def package_modules() -> list[Path]:
    return sorted((ROOT / "alpaca_qlora").rglob("*.py"))


def test_no_package_module_is_over_200_lines_without_saying_why():
    for path in package_modules():
        lines = path.read_text().splitlines()
        if len(lines) > 200:
            docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
            assert "lines" in docstring.lower(), f"{path.relative_to(ROOT)}: {len(lines)} lines and no reason given"


def test_the_package_has_no_import_cycles():
    graph = {}
    for path in package_modules():
        targets = {module_file(name) for name in imported_names(path)}
        graph[path] = {target for target in targets if target is not None and target != path}

    visiting, done = [], set()

    def visit(node):
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join(
            str(p.relative_to(ROOT)) for p in visiting[visiting.index(node):] + [node])
        visiting.append(node)
        for target in graph.get(node, ()):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_importing_a_stage_or_a_command_loads_no_heavy_library():
    """The launcher process of a multi-GPU run and `--help` stay fast, and Unsloth can be imported first."""
    modules = [f"stages.{stage_script(stage).stem}" for stage in STAGES] + [
        f"alpaca_qlora.cli.{path.stem}" for path in (ROOT / "alpaca_qlora/cli").glob("*.py") if path.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(h for h in ('torch', 'transformers', 'trl', 'peft', 'unsloth', 'datasets') if h in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
