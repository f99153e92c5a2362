"""Run a command under ``accelerate launch --cpu`` with N processes (one torch thread each), as users scale out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*target: str, num_processes: int = 2, env: dict[str, str] | None = None
                      ) -> subprocess.CompletedProcess:
    """``accelerate launch --cpu --num_processes N <target>`` (``target``: ``"-m", "module", *args`` or a script and
    its arguments); asserts that it succeeded and returns the finished process (stdout / stderr as text)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *target]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def launch_two(args: list[str]) -> subprocess.CompletedProcess:
    """``uplift-diffusion ARGS`` on two CPU processes."""
    return accelerate_launch("-m", "uplift_diffusion.cli", *args)
