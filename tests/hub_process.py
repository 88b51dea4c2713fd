"""A real `netrecall serve` in a subprocess with its own chDB path (one engine per process), for the CLI,
MCP-over-HTTP and owner-note tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETRECALL_")}
    env["NETRECALL_HOME"] = str(home)
    return env


class Hub:
    def __init__(self, home: Path, token: str) -> None:
        self.home = home
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store_path = home / "store"
        self.log = home / "hub.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Hub:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netrecall",
                "serve",
                "--port",
                str(self.port),
                "--token",
                self.token,
                "--store",
                f"chdb://{self.store_path}",
                "--log-level",
                "warning",
            ],
            env=cli_env(self.home),
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"hub did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, token: bool = True, check: bool = True) -> subprocess.CompletedProcess:
        extra = ["--url", self.url] + (["--token", self.token] if token else [])
        result = subprocess.run(
            [sys.executable, "-m", "netrecall", *args, *extra],
            env=cli_env(self.home),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"netrecall {' '.join(args)} failed: {result.stderr}")
        return result
