"""Run a command under ``accelerate launch`` as N CPU processes (one torch thread each), as users scale out.

``accelerate launch --cpu --num_processes N`` starts ONE process in accelerate 1.x (its CPU launcher needs
``mpirun`` for more), so a test launched that way never runs anything in parallel. The launch here uses accelerate's
torch-elastic launcher (``--multi_gpu``, which starts N processes whatever the device) with ``ACCELERATE_USE_CPU=1``,
so that ``Accelerator()`` joins them into one gloo group on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*target: str, num_processes: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N <target>`` (``target``: ``"-m",
    "module", *args`` or a script and its arguments); asserts that it succeeded within ``timeout`` seconds and returns
    the finished process (stdout / stderr as text). A launch that hangs (processes waiting for each other forever) is
    killed with all its workers."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--num_cpu_threads_per_process", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), *target]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torch's launcher starts each worker in a session of its own: kill the whole tree, workers first
            launcher = psutil.Process(proc.pid)
            for process in [*launcher.children(recursive=True), launcher]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"accelerate launch hung for {timeout} s: {stdout[-3000:]}{stderr[-3000:]}") from None
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def launch_two(args: list[str]) -> subprocess.CompletedProcess:
    """``uplift-diffusion ARGS`` on two CPU processes."""
    return accelerate_launch("-m", "uplift_diffusion.cli", *args)
