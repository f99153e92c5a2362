"""``--num-processes N`` of ``train`` and ``eval``: the command starts its N processes itself, with torch's elastic
launcher (what ``accelerate launch --multi_gpu`` runs), so that a failure in the workers ends in one line.

Under ``accelerate launch`` a worker that exits with an error makes the launcher raise ``ChildFailedError`` with its
own traceback, and the other workers print theirs (a collective whose peer died); accelerate gives no way to avoid
it. Here the workers (told by ``UPLIFT_LAUNCHED=1``) print no error: each writes it to the error file torch's
launcher gives every worker (``TORCHELASTIC_ERROR_FILE``, see :func:`report_to_launcher`) and exits, and this process
prints one line: a user error's message (exit code 2), or a bug's or signal's cause with the path of a log file that
holds every worker's traceback (exit code 1).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence

from .errors import UserError, WorkersFailedError

LAUNCHED_ENV = "UPLIFT_LAUNCHED"  # set for the workers started here: their errors go to the launcher, not stderr
LAUNCHER_PID_ENV = "UPLIFT_LAUNCHER_PID"  # the launcher's pid: a worker ends with it (tie_to_launcher)
_PR_SET_PDEATHSIG = 1


class WorkerError(UserError):
    """A user error raised in a launched worker (the message is the worker's)."""


def is_launched_worker() -> bool:
    """Whether this process is a worker started by :func:`launch_workers` (its errors are the launcher's to print)."""
    return os.environ.get(LAUNCHED_ENV) == "1" and "TORCHELASTIC_ERROR_FILE" in os.environ


def is_worker() -> bool:
    """Whether this process is one of several started by a launcher (ours, ``accelerate launch``, ``torchrun``)."""
    return "WORLD_SIZE" in os.environ


def report_to_launcher(message: str, traceback: str | None = None) -> bool:
    """In a worker of torch's elastic launcher (``accelerate launch``, ``torchrun``, ``--num-processes``), put an
    error where the launcher's failure report reads it (``TORCHELASTIC_ERROR_FILE``): a user error's one-line
    ``message``, or (``traceback`` given) a bug's last line and traceback in torch's own layout. Returns True when the
    worker should stay silent: the launcher is ours (it prints one line for all the workers), or, for a user error,
    this is not rank 0 (the launcher's report lists every failed rank's message; N identical lines would not say
    more)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    now = int(time.time())
    data = ({"message": message, "timestamp": now, "user_error": True} if traceback is None else
            {"message": {"message": message, "extraInfo": {"py_callstack": traceback, "timestamp": str(now)}}})
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        return False
    return is_launched_worker() or (traceback is None and os.environ.get("RANK", "0") != "0")


def tie_to_launcher() -> None:
    """In a worker started by :func:`launch_workers`: end when the launcher ends, however it ends (SIGKILL too), so no
    worker goes on training beside a ``--resume`` (the launcher holds the run folder's lock, its workers do not).
    Linux: the kernel sends SIGKILL at the launcher's death (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread
    watches the parent pid."""
    import signal
    import threading

    launcher = int(os.environ.get(LAUNCHER_PID_ENV, "0") or 0)
    if not launcher:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher:  # it died before the prctl
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == launcher:
            threading.Event().wait(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="launcher-watchdog").start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cause(failures: dict) -> str:
    """One line for the root cause among the failed workers. A worker ended by a signal the launcher does not send
    (SIGKILL of the kernel out of memory, SIGSEGV) comes first: its peers then fail in their collectives. Then the
    first bug; the workers ended by SIGTERM were stopped by the launcher because of another."""

    def order(item):
        rank, failure = item
        data = failure.error_file_data.get("message")
        killed = failure.exitcode < 0 and failure.signal_name() not in ("SIGTERM", "SIGINT", "SIGHUP")
        return (0 if killed else 1 if isinstance(data, dict) else 2, failure.timestamp, rank)

    rank, failure = min(failures.items(), key=order)
    data = failure.error_file_data.get("message")
    if failure.exitcode < 0:
        name = failure.signal_name()
        hint = " (out of memory? the kernel ends the largest process with SIGKILL)" if name == "SIGKILL" else ""
        return f"process {rank} was killed by {name}{hint}"
    if isinstance(data, dict) and data.get("message"):
        return f"process {rank} failed: {' '.join(str(data['message']).split())}"
    return f"process {rank} exited with code {failure.exitcode}"


def _write_log(err, name: str) -> str:
    """Every failed worker's traceback (and torch's report) in a log file; returns its path."""
    fd, path = tempfile.mkstemp(prefix=f"uplift-diffusion-{name}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        for rank, failure in sorted(err.failures.items()):
            data = failure.error_file_data.get("message")
            stack = data.get("extraInfo", {}).get("py_callstack") if isinstance(data, dict) else None
            f.write(f"process {rank} (pid {failure.pid}, exit code {failure.exitcode}):\n"
                    f"{stack or failure.message}\n\n")
        f.write(err.format_msg())
    return path


def launch_workers(num_processes: int, argv: Sequence[str], name: str = "run") -> None:
    """Run ``uplift-diffusion ARGV`` as ``num_processes`` processes of one rendezvous on this machine: one per GPU,
    or CPU processes (``ACCELERATE_USE_CPU=1``) without a GPU. The workers get the same arguments; a command knows it
    is one of them by :func:`is_worker` (and does its share of the work instead of launching).

    Raises:
        WorkerError: a worker stopped on a user error (its one-line message).
        WorkersFailedError: a worker failed otherwise (a bug, a signal): the cause in one line and the log file
            that holds every worker's traceback.
        Interrupted: Ctrl+C or SIGTERM (the workers are stopped first).
    """
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ[LAUNCHED_ENV] = "1"
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    if not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "1"  # accelerate then joins the processes in one gloo group
    # torch.distributed.run's default: one thread per worker unless set (N processes would oversubscribe the cores)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=f"uplift-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
                          monitor_interval=0.1)
    logging.disable(logging.ERROR)  # the agent's "closing signal" / "failed (exitcode: 2)" lines: said below
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "uplift_diffusion.cli", *argv)
    except SignalException as err:  # Ctrl+C / SIGTERM: the agent has stopped the workers; one line, not its traceback
        from .errors import Interrupted

        raise Interrupted(int(err.sigval)) from None
    except ChildFailedError as err:
        # A user error in one worker makes the others fail too (a collective whose peer left, the launcher's
        # SIGTERM): the user error is the cause, whichever failure came first.
        for _rank, failure in sorted(err.failures.items(), key=lambda item: (item[1].timestamp, item[0])):
            if failure.exitcode == 2 and isinstance(failure.message, str) and \
                    failure.error_file_data.get("user_error"):
                raise WorkerError(failure.message) from None
        raise WorkersFailedError(f"{_cause(err.failures)}; every process's traceback is in "
                                 f"{_write_log(err, name)}") from None
    finally:
        logging.disable(logging.NOTSET)
