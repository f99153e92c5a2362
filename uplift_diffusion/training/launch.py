"""``uplift-diffusion train --num-processes N``: start the N training processes ourselves, with torch's elastic
launcher (what ``accelerate launch --multi_gpu`` runs), so that a user error in the workers ends in one line.

Under ``accelerate launch`` a worker that exits with an error makes the launcher raise ``ChildFailedError`` with its
traceback after the worker's one-line message; accelerate gives no way to avoid it. Here the workers (told by
``UPLIFT_LAUNCHED=1``) print nothing for a user error: they write it to the error file torch's launcher gives every
worker (``TORCHELASTIC_ERROR_FILE``, see ``uplift_diffusion.cli``) and exit with code 2, and this process prints the
first failure's message once. A worker that fails otherwise (a bug, a signal) keeps the launcher's full report.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

from ..utils.errors import UserError

LAUNCHED_ENV = "UPLIFT_LAUNCHED"  # set for the workers started here: user errors go to the launcher, not stderr
LAUNCHER_PID_ENV = "UPLIFT_LAUNCHER_PID"  # the launcher's pid: a worker ends with it (tie_to_launcher)
_PR_SET_PDEATHSIG = 1


class WorkerError(UserError):
    """A user error raised in a launched worker (the message is the worker's)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tie_to_launcher() -> None:
    """In a worker started by :func:`launch_workers`: end when the launcher ends, however it ends (SIGKILL too), so no
    worker goes on training beside a ``--resume`` (the launcher holds the run folder's lock, its workers do not).
    Linux: the kernel sends SIGKILL at the launcher's death (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread
    watches the parent pid."""
    import signal
    import sys
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


def launch_workers(num_processes: int, command: Sequence[str]) -> None:
    """Run ``command`` (an executable and its arguments) as ``num_processes`` processes of one rendezvous on this
    machine: one per GPU, or CPU processes (``ACCELERATE_USE_CPU=1``) without a GPU.

    Raises:
        WorkerError: a worker stopped on a user error (its one-line message).
        ChildFailedError: a worker failed otherwise (torch's report of every failure).
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
        elastic_launch(config, entrypoint=command[0])(*command[1:])
    except SignalException as err:  # Ctrl+C / SIGTERM: the agent has stopped the workers; one line, not its traceback
        from ..utils.errors import Interrupted

        raise Interrupted(int(err.sigval)) from None
    except ChildFailedError as err:
        _rank, failure = err.get_first_failure()
        if failure.exitcode == 2 and isinstance(failure.message, str) and failure.error_file_data.get("user_error"):
            raise WorkerError(failure.message) from None
        raise
    finally:
        logging.disable(logging.NOTSET)
