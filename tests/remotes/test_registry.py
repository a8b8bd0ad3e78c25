"""The adapter in DVC's model registry: `dvc artifacts get` fetches it from the remote, no clone, nothing run.

dvc.yaml declares `artifacts: alpaca-qlora-adapter` (type model, path models/adapter). DVC 3.67 resolves an
artifact's version through GTO git tags (dvc/repo/artifacts.py, Artifacts.get_rev): an *annotated* tag
`alpaca-qlora-adapter@v<semver>` names the commit; without `--rev` it takes the highest semver. Then it reads
models/adapter from that commit's dvc.lock and downloads the files from the DVC remote.
"""
from __future__ import annotations

from ruamel.yaml import YAML

from .dvcrepo import ADAPTER, digest_tree, dvc, git
from .dvcrepo import gpu_box as make_gpu_box

NAME = "alpaca-qlora-adapter"


def test_artifacts_get_fetches_the_tagged_adapter_from_the_remote(team_workspace, make_remote, tmp_path):
    declared = YAML(typ="safe", pure=True).load((team_workspace / "dvc.yaml").read_text())["artifacts"][NAME]
    assert declared["path"] == ADAPTER and declared["type"] == "model" and declared["desc"] and declared["labels"]

    remote = make_remote("local")
    gpu_box = make_gpu_box(team_workspace, tmp_path)
    remote.configure(gpu_box)
    dvc(gpu_box, "push", ADAPTER)
    adapter = digest_tree(gpu_box, ADAPTER)
    origin = str(tmp_path / "origin.git")
    fetch = ["artifacts", "get", origin, NAME, "--remote-config", f"url={remote.url}"]

    untagged = dvc(tmp_path, *fetch, "-o", str(tmp_path / "none"), check=False)
    assert untagged.returncode != 0 and f"Unable to find artifact '{NAME}'" in untagged.output, untagged

    git(gpu_box, "tag", "-a", f"{NAME}@v1.0.0", "-m", "First adapter")  # annotated: GTO skips lightweight tags
    git(gpu_box, "push", "--quiet", "origin", f"{NAME}@v1.0.0")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    got = dvc(empty, *fetch, "-o", "adapter")
    assert "Downloaded" in got.output, got
    assert digest_tree(empty, "adapter") == {rel.replace(ADAPTER, "adapter", 1): digest
                                             for rel, digest in digest_tree(gpu_box, ADAPTER).items()}
    assert adapter and (empty / "adapter/README.md").read_text() == (gpu_box / ADAPTER / "README.md").read_text()
    assert not (empty / ".git").exists() and not (empty / ".dvc").exists(), "no clone, no DVC project"

    pinned = dvc(empty, *fetch, "--rev", "v1.0.0", "-o", "pinned")
    assert sorted(digest_tree(empty, "pinned").values()) == sorted(digest_tree(empty, "adapter").values()), pinned
