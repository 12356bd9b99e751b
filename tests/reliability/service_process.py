"""The real service as a separate process (docker/entrypoint.sh), for tests that kill it, load
it, or watch its memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.service_fixtures import ADMIN_TOKEN


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_env(tmp_path: Path, model_dir: Path, **settings: str) -> dict[str, str]:
    """QSIM_* variables for a service on its own SQLite database and index under `tmp_path`;
    `settings` adds or overrides (lower-case names: index_save_interval_seconds="0.01")."""
    env = {
        "QSIM_ENV": "test",
        "QSIM_DATABASE_URL": f"sqlite:///{tmp_path / 'qsim.db'}",
        "QSIM_MODEL_DIR": str(model_dir),
        "QSIM_MODELS_ROOT": str(model_dir.parent),
        "QSIM_INDEX_DIR": str(tmp_path / "index"),
        "QSIM_SEED_ON_EMPTY": "false",
    }
    env.update({f"QSIM_{name.upper()}": value for name, value in settings.items()})
    return env


class ServiceProcess:
    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "QSIM_HOST": "127.0.0.1",
            "QSIM_PORT": str(self.port),
            "QSIM_ADMIN_TOKEN": ADMIN_TOKEN,
            "QSIM_LOG_LEVEL": "WARNING",
            "QSIM_ACCESS_LOG": "false",
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(ROOT / "docker" / "entrypoint.sh")], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"service not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """kill -9: no shutdown handler runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")
