"""Run a command under ``accelerate launch`` as N CPU processes (one torch thread each), as users scale out.

``accelerate launch --cpu --num_processes N`` starts ONE process in accelerate 1.x (its CPU launcher needs
``mpirun`` for more), so a test launched that way never runs anything in parallel. The launch here uses accelerate's
torch-elastic launcher (``--multi_gpu``, which starts N processes whatever the device) with ``ACCELERATE_USE_CPU=1``,
so that ``Accelerator()`` joins them into one gloo group on the CPU.

Also :func:`run_at_once`: independent processes started together (one per core), for tests that measure each.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N <target>`` (``target``: ``"-m",
    "module", *args`` or a script and its arguments), started in the background: a test does its own one-process
    work while the launched processes start up (a launch spends seconds importing on one core), then calls
    :meth:`wait`. As a context manager, a launch still running when the block fails is killed with its workers."""

    def __init__(self, *target: str, num_processes: int = 2, timeout: float = 600):
        self.cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(num_processes), "--num_machines", "1", "--num_cpu_threads_per_process", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                    *target]
        self.timeout = timeout
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
        # files, not pipes: nobody reads a pipe while the test works, and a full one would stall the launch
        self._out, self._err = (tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
                                 for _ in range(2))
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=self._err, text=True, env=env)

    def wait(self) -> subprocess.CompletedProcess:
        """Asserts that the launch succeeded within ``timeout`` seconds of now and returns the finished process
        (stdout / stderr as text). A launch that hangs (processes waiting for each other forever) is killed with
        all its workers."""
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            stdout, stderr = self._read()
            raise AssertionError(f"accelerate launch hung for {self.timeout} s: {stdout[-3000:]}{stderr[-3000:]}") \
                from None
        stdout, stderr = self._read()
        assert self.proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
        return subprocess.CompletedProcess(self.cmd, self.proc.returncode, stdout, stderr)

    def kill(self) -> None:
        """torch's launcher starts each worker in a session of its own: kill the whole tree, workers first."""
        with contextlib.suppress(psutil.NoSuchProcess):
            launcher = psutil.Process(self.proc.pid)
            for process in [*launcher.children(recursive=True), launcher]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        self.proc.wait()

    def _read(self) -> tuple[str, str]:
        texts = []
        for file in (self._out, self._err):
            file.seek(0)
            texts.append(file.read())
            file.close()
        return texts[0], texts[1]

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill()


def accelerate_launch(*target: str, num_processes: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """:class:`Launch` waited for at once: asserts success and returns the finished process."""
    return Launch(*target, num_processes=num_processes, timeout=timeout).wait()


def launch_two(args: list[str]) -> subprocess.CompletedProcess:
    """``uplift-diffusion ARGS`` on two CPU processes."""
    return accelerate_launch("-m", "uplift_diffusion.cli", *args)


def run_at_once(commands: dict[str, list[str]], env: dict[str, str],
                timeout: float = 600) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once and wait for all: ``{name: finished process}`` (stdout / stderr as text; the
    caller checks the return codes). Per-process measurements (page faults, peak memory) do not depend on the other
    processes. A test that fails while they run leaves none behind."""
    procs = {}
    try:
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        return results
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
