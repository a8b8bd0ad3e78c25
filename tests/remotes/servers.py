"""Real storage servers on 127.0.0.1 for the DVC remote tests.

Each server is a context manager that starts a real process (or socket
thread) on a free loopback port and stops it on exit. Nothing here listens on
any address other than 127.0.0.1.

- ``SSHServer``: a private OpenSSH ``sshd`` run by the current user (root on
  CI) with a generated host key, key-only authentication and the internal
  SFTP subsystem, which is what ``dvc-ssh`` (asyncssh/sshfs) talks to.
- ``MotoS3Server``: ``moto_server`` (moto in server mode, what DVC's own test
  suite uses for S3) with IAM authentication switched on, so that a wrong
  access key is refused the way real S3 refuses it.
- ``SilentTCPServer``: accepts TCP connections and never answers: the
  "firewall drops my packets" remote that makes clients hang without a
  timeout.
- ``ThrottlingProxy``: a TCP proxy that forwards at a bounded rate and counts
  the bytes sent upstream, so a test can kill a ``dvc push`` half way through
  an upload.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, timeout: float, process: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    Fails early, with the server's log, if ``process`` exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            detail = log.read_text(errors="replace") if log and log.exists() else ""
            raise RuntimeError(
                f"server exited with code {process.returncode} before listening on "
                f"{LOOPBACK}:{port}.\n{detail}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    detail = log.read_text(errors="replace") if log and log.exists() else ""
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout}s.\n{detail}")


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def find_sshd() -> str | None:
    """Path of the OpenSSH server binary, or None when openssh-server is not installed."""
    return shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
    )


class SSHServer:
    """A private ``sshd`` on 127.0.0.1 with key authentication and SFTP.

    ``root`` is a scratch directory that holds the host key, the client key
    pair, ``authorized_keys``, the config and the log. ``user`` is the login
    name clients must use (the current user: sshd can only log in as itself
    when not started by root, and CI runs as root).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.user = _current_user()
        self.client_key = self.root / "id_ed25519"
        self.wrong_key = self.root / "id_ed25519_not_authorized"
        self.log = self.root / "sshd.log"
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "SSHServer":
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError(
                "sshd not found: install the OpenSSH server (Debian: "
                "`apt-get install -y openssh-server`, done by .ci/install-remote-test-deps.sh)."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = self.root / "ssh_host_ed25519_key"
        for key in (host_key, self.client_key, self.wrong_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
                check=True, capture_output=True,
            )
        authorized = self.root / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        if os.geteuid() == 0:
            # sshd started by root insists on its privilege-separation directory.
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {LOOPBACK}",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    # The scratch directory lives under a world-readable tmp dir.
                    "StrictModes no",
                    # No PAM stack in CI containers; key auth needs none.
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    # DVC opens several SFTP channels per connection.
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected {config}: {check.stderr}")
        self._log_handle = self.log.open("wb")
        self._process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdout=self._log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=20, process=self._process, log=self.log)
        return self

    def __exit__(self, *exc) -> None:
        _stop(self._process)
        self._log_handle.close()

    def url(self, path: str | Path) -> str:
        """``ssh://`` URL of an absolute ``path`` on this server."""
        return f"ssh://{LOOPBACK}:{self.port}{Path(path).as_posix()}"


class MotoS3Server:
    """``moto_server`` on 127.0.0.1 with IAM authentication enforced.

    moto skips authentication for the first ``INITIAL_NO_AUTH_ACTION_COUNT``
    requests. The fixture spends exactly those on creating an IAM user, its
    policy, its access key and the bucket; every request after that must be
    signed with that key, and a wrong key gets the error real S3 gives.
    """

    #: The requests made before authentication starts (see ``__enter__``).
    _SETUP_ACTIONS = 4

    def __init__(self, root: Path, *, bucket: str = "dvc-team"):
        self.root = Path(root)
        self.port = free_port()
        self.bucket = bucket
        self.region = "us-east-1"
        self.log = self.root / "moto.log"
        self.access_key_id = ""
        self.secret_access_key = ""
        self._process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> "MotoS3Server":
        import boto3

        self.root.mkdir(parents=True, exist_ok=True)
        moto_server = Path(sys.executable).with_name("moto_server")
        if not moto_server.exists():
            raise RuntimeError(f"{moto_server} not found: install `moto[server]` in this venv.")
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(self._SETUP_ACTIONS))
        self._log_handle = self.log.open("wb")
        self._process = subprocess.Popen(
            [str(moto_server), "-H", LOOPBACK, "-p", str(self.port)],
            stdout=self._log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        wait_for_port(self.port, timeout=60, process=self._process, log=self.log)
        setup = dict(
            endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="dvc-team")  # action 1
        iam.put_user_policy(  # action 2
            UserName="dvc-team", PolicyName="s3-all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="dvc-team")["AccessKey"]  # action 3
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.client().create_bucket(Bucket=self.bucket)  # action 4: the last free one
        return self

    def __exit__(self, *exc) -> None:
        _stop(self._process)
        self._log_handle.close()

    def client(self, endpoint: str | None = None):
        """A boto3 S3 client signed with the valid access key."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"


class _LoopbackListener:
    """A TCP listener on a free 127.0.0.1 port that hands each connection to `_handle` on a thread.

    `_handle` returns the sockets it opened, which are closed when the `with` block ends.
    """

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []

    def __enter__(self):
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_forever, daemon=True)
        self._thread.start()
        return self

    def _accept_forever(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self._conns += self._handle(conn)

    def _handle(self, conn: socket.socket) -> list[socket.socket]:
        raise NotImplementedError

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


class SilentTCPServer(_LoopbackListener):
    """Accepts connections on 127.0.0.1 and never sends a byte.

    A client without a timeout waits forever on it, as it would on a host
    behind a firewall that drops packets after the handshake.
    """

    def _handle(self, conn: socket.socket) -> list[socket.socket]:
        return [conn]


class ThrottlingProxy(_LoopbackListener):
    """TCP proxy from 127.0.0.1:``port`` to 127.0.0.1:``target_port``.

    Forwards client-to-server bytes at about ``rate`` bytes per second (the
    other direction unthrottled) and counts them in ``uploaded``, so a test can
    interrupt a transfer once a known share of it has gone through.
    """

    def __init__(self, target_port: int, *, rate: int):
        super().__init__()
        self.target_port = target_port
        self.rate = rate
        self.uploaded = 0
        self._lock = threading.Lock()

    def _handle(self, client: socket.socket) -> list[socket.socket]:
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
        except OSError:
            client.close()
            return []
        upstream.settimeout(None)
        threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        return [client, upstream]

    def _pipe(self, src: socket.socket, dst: socket.socket, throttle: bool) -> None:
        chunk = 16 * 1024
        try:
            while not self._stop.is_set():
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if throttle:
                    # One lock for every connection: the rate bounds the total, as one slow link would.
                    with self._lock:
                        self.uploaded += len(data)
                        time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
