"""A redis-server of the tests' own, on a free port, stopped with them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from agent._ports import free_port

__all__ = ["RedisServer"]


class RedisServer:
    """One redis-server process; with ``append_only``, it keeps its data in
    ``directory`` across restarts, as a production server with AOF does."""

    def __init__(
        self,
        directory: Path,
        *,
        append_only: bool = False,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: it is on PATH in CI")
        self.binary = binary
        self.directory = directory
        self.append_only = append_only
        # (certificate, key): serve TLS only, on ``port``.
        self.tls = tls
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, prefix: str = "gp") -> str:
        if self.tls is not None:
            certificate = self.tls[0]
            return (
                f"rediss://127.0.0.1:{self.port}/0?prefix={prefix}"
                f"&ssl_ca_certs={certificate}"
            )
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            certificate, key = (str(path) for path in self.tls)
            ports = [
                *("--port", "0", "--tls-port", str(self.port)),
                *("--tls-cert-file", certificate, "--tls-key-file", key),
                *("--tls-ca-cert-file", certificate, "--tls-auth-clients", "no"),
            ]
        command = [
            self.binary,
            *ports,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.append_only else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                if self.tls is not None:
                    return True  # listening is enough: a PING would need TLS
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Stop it at once, as a crash would (SIGKILL)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
