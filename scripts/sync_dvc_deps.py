"""Rewrite each stage's package deps in dvc.yaml to exactly the package files its script imports.

    python -m scripts.sync_dvc_deps          # then review `git diff dvc.yaml`

tests/test_layout.py fails when they differ; this is the fix it names. Other deps (data, templates, the
stage script) and the file's comments are kept.
"""
from __future__ import annotations

from ruamel.yaml import YAML

from tests.imports import ROOT, package_files_imported_by


def main() -> None:
    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = ROOT / "dvc.yaml"
    document = yaml.load(path.read_text())
    for name, stage in document["stages"].items():
        command = stage["cmd"].split()
        script = ROOT / (command[command.index("-m") + 1].replace(".", "/") + ".py")
        others = [dep for dep in stage["deps"] if not dep.startswith("alpaca_qlora/")]
        package = sorted(package_files_imported_by(script))
        stage["deps"][:] = others[:1] + package + others[1:]
        print(f"{name}: {len(package)} package files")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.dump(document, handle)


if __name__ == "__main__":
    main()
