"""The shipped default remote: where it points, how a user overrides it, where credentials go."""

from __future__ import annotations

import configparser
import shutil

from tests.conftest import REPO_ROOT
from .dvcrepo import dvc, git

CONFIG = REPO_ROOT / ".dvc" / "config"


def _parsed_config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read_string(CONFIG.read_text())
    return parser


def test_repo_ships_team_directory_remote_as_default():
    config = _parsed_config()
    assert config.get("core", "remote") == "team", "core.remote must name the team remote"
    assert config.get("core", "analytics") == "false", "analytics try the network: keep them off"
    url = config.get("'remote \"team\"'", "url")
    assert url.startswith("/"), f"the team remote must be an absolute directory path (a mount), got {url!r}"
    remotes = [section for section in config.sections() if section.startswith("'remote ")]
    assert remotes == ["'remote \"team\"'"], f"only the team remote is active in git, got {remotes}"


def test_config_has_commented_examples_for_s3_ssh_and_gcs():
    text = CONFIG.read_text()
    for line in ("#     url = s3://", "#     url = ssh://", "#     url = gs://",
                 "dvc remote modify --local team url"):
        assert line in text, (
            f"{CONFIG} lost {line!r}: `dvc config`/`dvc remote` without --local rewrite the file "
            "and drop comments; restore them from git"
        )


def test_local_override_changes_the_url_without_touching_git(tmp_path):
    """The documented override lands in .dvc/config.local, which git ignores; .dvc/config is unchanged."""
    repo = tmp_path / "clone"
    repo.mkdir()
    git(repo, "init", "--quiet")
    shutil.copytree(REPO_ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    git(repo, "add", ".dvc")
    git(repo, "commit", "--quiet", "-m", "dvc config")
    mount = tmp_path / "nfs" / "dvc" / "alpaca-qlora"

    dvc(repo, "remote", "modify", "--local", "team", "url", str(mount))
    # A personal S3 remote with its secret, the way docs/sharing.md says to add one.
    dvc(repo, "remote", "add", "--local", "mine-s3", "s3://my-bucket/alpaca-qlora")
    dvc(repo, "remote", "modify", "--local", "mine-s3", "secret_access_key", "s3cr3t-not-for-git")

    listed = {line.split()[0]: line.split()[1:] for line in dvc(repo, "remote", "list").output.splitlines()}
    assert listed == {
        "team": [str(mount), "(default)"], "mine-s3": ["s3://my-bucket/alpaca-qlora"],
    }, f"override not in effect: {listed}"
    assert git(repo, "status", "--porcelain").output == "", "an override must not change tracked files"
    assert git(repo, "check-ignore", ".dvc/config.local", check=False).returncode == 0, (
        ".dvc/config.local (credentials) must be git-ignored"
    )
    assert "s3cr3t-not-for-git" in (repo / ".dvc" / "config.local").read_text()
    assert "s3cr3t-not-for-git" not in (repo / ".dvc" / "config").read_text()
