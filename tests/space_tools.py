"""Run the real app.py in its own process, the way a Space does (`python app.py`), with a chosen model and env.

The in-process `lab_app` fixture serves the embedded model; a Space that serves SD 1.5 (or runs on ZeroGPU) needs a
process whose environment is set before app.py is imported (MODEL_ID, HF_HUB_CACHE, APP_CACHE_MB, a `spaces`
module on the path). `SpaceProcess` starts one, waits until it answers, and stops it; its stderr is kept for
assertions, and its peak resident memory can be reset and read (/proc/<pid>/clear_refs, VmHWM).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpaceProcess:
    """`python app.py` in a subprocess with `env` added to this process's environment.

    Args:
        env (`dict[str, str]`): variables to set (PYTHONPATH entries are put first on the path).
        log (`Path`): where its stdout and stderr go.
        timeout (`float`, defaults to 300): seconds to wait for it to answer.
    """

    def __init__(self, env: dict[str, str], log: Path, timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        full = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "PYTHONUNBUFFERED": "1", **env}
        full["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=REPO, env=full, stdout=self._out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if httpx.get(self.url + "config", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"app.py did not answer in {timeout:.0f} s:\n{self.text()[-3000:]}")

    def text(self) -> str:
        """Everything it printed so far."""
        self._out.flush()
        return self.log.read_text(errors="replace")

    def status_bytes(self, key: str) -> int:
        """A /proc/<pid>/status figure in bytes (VmRSS: resident now, VmHWM: peak since start or reset)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        """VmHWM := VmRSS now (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a Space's container stop (SIGINT makes Gradio close slowly: ~7 s)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
