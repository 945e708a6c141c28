"""Start `easyspec app` in a subprocess on a free localhost port, for the API and browser tests."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

STARTUP_TIMEOUT_S = 240  # imports + model load + speed probe on a loaded 2-core machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_process(base: Path, draft: Path, log_path: Path,
                extra: Sequence[str] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (URL, process) once the app answers; stop the process (by its pid) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "easyspec.app.cli", "app", "--port", str(port), "--host", "127.0.0.1",
           "--allow-custom-models", "--base", str(base), "--draft", str(draft), *extra]
    # Its own cache folder: what the app writes there (tuned plans) stays out of the user's cache.
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "EASYSPEC_CACHE": str(Path(log_path).parent / "cache")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited with {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not answer within {STARTUP_TIMEOUT_S} s:\n"
                                       f"{Path(log_path).read_text()[-3000:]}")
                time.sleep(0.5)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
