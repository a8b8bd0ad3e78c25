"""A storage location on one of the test servers, and how a clone is pointed at it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .dvcrepo import dvc
from .servers import MotoS3Server, SSHServer

REMOTE_KINDS = ("local", "ssh", "s3")


@dataclass
class Remote:
    """One empty storage location on one server, and how a clone is pointed at it."""

    kind: str
    url: str
    #: ``dvc remote modify --local team KEY VALUE`` settings besides ``url``.
    settings: dict[str, str] = field(default_factory=dict)
    #: Where the objects land on this machine (local and SSH remotes), to inspect or damage them.
    path: Path | None = None
    s3: MotoS3Server | None = None
    ssh: SSHServer | None = None
    prefix: str = ""

    def via(self, port: int) -> dict[str, str]:
        """Settings that reach this remote's server through 127.0.0.1:``port`` (a proxy, a dead port)."""
        if self.kind == "ssh":
            return {"url": self.url.replace(f":{self.ssh.port}/", f":{port}/", 1)}
        if self.kind == "s3":
            return {"endpointurl": f"http://127.0.0.1:{port}"}
        raise ValueError("a local directory remote has no network port")

    def configure(self, repo: Path, **overrides: str) -> None:
        """Point ``repo``'s default remote ``team`` here, in .dvc/config.local only."""
        listed = dvc(repo, "remote", "list").output
        assert any(line.split()[:1] == ["team"] and "(default)" in line for line in listed.splitlines()), (
            f"the workspace lost the shipped default remote 'team' (.dvc/config):\n{listed}"
        )
        for key, value in {"url": self.url, **self.settings, **overrides}.items():
            dvc(repo, "remote", "modify", "--local", "team", key, str(value))

    # What the remote holds, as paths relative to its root ("files/md5/ab/cdef...").
    def objects(self) -> set[str]:
        if self.s3 is not None:
            keys: set[str] = set()
            paginator = self.s3.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=self.prefix + "/"):
                keys.update(obj["Key"][len(self.prefix) + 1:] for obj in page.get("Contents", []))
            return keys
        if self.path is None or not self.path.exists():
            return set()
        return {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()}

    def data_objects(self) -> set[str]:
        """Stored data objects only (not run-cache entries, not temporary upload files)."""
        return {
            rel for rel in self.objects()
            if rel.startswith("files/md5/") and not Path(rel).name.startswith(".")
        }

    def delete(self, relpath: str) -> None:
        if self.s3 is not None:
            self.s3.client().delete_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{relpath}")
        else:
            (self.path / relpath).unlink()


def new_remote(kind: str, scratch: Path, *, ssh: SSHServer | None = None,
               s3: MotoS3Server | None = None) -> Remote:
    """A fresh, empty remote of ``kind``: a directory under ``scratch``, a directory served by
    ``ssh``, or a new prefix in ``s3``'s bucket."""
    if kind == "local":
        path = Path(scratch) / "team-remote"
        return Remote(kind, str(path), path=path)
    if kind == "ssh":
        path = Path(scratch) / "ssh-remote"
        return Remote(
            kind, ssh.url(path), path=path, ssh=ssh,
            settings={"user": ssh.user, "keyfile": str(ssh.client_key), "timeout": "20"},
        )
    if kind == "s3":
        prefix = f"alpaca-qlora-{uuid.uuid4().hex[:8]}"
        return Remote(
            kind, s3.url(prefix), s3=s3, prefix=prefix,
            settings={
                "endpointurl": s3.endpoint,
                "region": s3.region,
                "access_key_id": s3.access_key_id,
                "secret_access_key": s3.secret_access_key,
                "connect_timeout": "10",
                "read_timeout": "30",
            },
        )
    raise ValueError(f"unknown remote kind {kind!r}; expected one of {REMOTE_KINDS}")
