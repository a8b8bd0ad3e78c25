"""Make a scratch copy of this repository in which the offline profile is params.yaml.

    python -m alpaca_qlora.cli.offline_workspace build/smoke [--set train.epochs=2 ...]

The copy holds the repository's files (tracked, plus untracked files git does not ignore), a params.yaml
with profiles/offline.yaml and then every --set laid over it (comments kept), and a fresh git repo with
one commit, so `dvc repro`, `dvc exp run -S ...` and `dvc exp show` work there as in any clone. The
user's own params.yaml, dvc.lock and outputs are never touched. `make smoke` and the tests use it.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from alpaca_qlora.errors import UserError, run_main
from alpaca_qlora.params import SCHEMA, ParamsError, read_yaml, validate_section

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE = Path("profiles") / "offline.yaml"


def parse_override(text: str) -> tuple[str, str, Any]:
    """"section.key=value" -> (section, key, value), the value read as YAML 1.2 like `dvc exp run -S`."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ParamsError(f"override {text!r}: expected section.key=value, e.g. train.learning_rate=1e-4")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    if section not in SCHEMA or key not in SCHEMA[section]:
        raise ParamsError(f"override {text!r}: unknown key '{dotted}'; the keys are those of params.yaml")
    try:
        return section, key, YAML(typ="safe", pure=True).load(raw) if raw.strip() else ""
    except YAMLError as error:
        raise ParamsError(f"override {text!r}: the value is not valid YAML ({getattr(error, 'problem', error)}); "
                          "quote it, e.g. --set 'lora.target_modules=[q_proj, v_proj]'") from None


def overlay_params(params_path: Path, overrides: list[tuple[str, str, Any]]) -> None:
    """Set each override in params_path in place, keeping its comments and layout, then validate."""
    yaml = YAML()  # round-trip: comments survive
    yaml.width = 4096
    document = yaml.load(params_path.read_text(encoding="utf-8"))
    for section, key, value in overrides:
        document[section][key] = value
    with open(params_path, "w", encoding="utf-8") as handle:
        yaml.dump(document, handle)
    merged = read_yaml(params_path)
    for section in SCHEMA:
        validate_section(section, merged[section], params_path)


def repository_files(root: Path) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, check=True, capture_output=True).stdout.decode()
    return sorted(path for path in listed.split("\0") if path and (root / path).is_file())


def make_offline_workspace(destination: Path, overrides: list[str] = (), *, source: Path = REPO_ROOT,
                           force: bool = False) -> Path:
    given, destination = destination, destination.resolve()
    parsed = [parse_override(text) for text in overrides]  # a mistyped key fails before anything is copied
    if destination.exists():
        if not force:
            raise UserError(f"{given} exists; pass --force to replace it, or choose another folder")
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    try:
        fill_workspace(destination, source, parsed)
    except BaseException:  # a bad value, a full disk: no half-made workspace is left to be mistaken for one
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return destination


def fill_workspace(destination: Path, source: Path, overrides: list[tuple[str, str, Any]]) -> None:
    for relative in repository_files(source):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target)
    # Outputs of the user's own runs may be tracked in git (dvc.lock): start clean so nothing is stale.
    (destination / "dvc.lock").unlink(missing_ok=True)
    profile = [(section, key, value) for section, values in read_yaml(source / PROFILE).items()
               for key, value in values.items()]
    overlay_params(destination / "params.yaml", profile + overrides)
    git = ["git", "-c", "user.name=offline-workspace", "-c", "user.email=offline@localhost",
           "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run(git + ["add", "-A"], cwd=destination, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "Offline profile workspace"], cwd=destination, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--force", action="store_true", help="replace the destination if it exists")
    args = parser.parse_args()
    print(make_offline_workspace(args.destination, args.overrides, force=args.force))


if __name__ == "__main__":
    run_main(main)
