"""Handing a stopped job back to Slurm so that it is requeued, and saying so.

When a Slurm job gets a stop signal, snnexp saves at the next step boundary
(``snnexp.train.signals``); ``hand_back`` then asks Slurm what the signal
meant (``scontrol show job``) and does what makes the job run again:

* ``scontrol requeue``, or preemption with ``GraceTime=0``: Slurm shows the
  job completing with ``Restarts`` one up; it requeues the job itself.
* preemption with ``GraceTime > 0`` (SIGTERM first, SIGKILL at its end): the
  job is running with ``PreemptTime`` set. Left to exit, it would end as done
  and never run again; so it requeues itself now (``scontrol requeue``; not
  through submitit's handler, which would count it as a time limit), and the
  preemptor starts without waiting for the grace time to end.
* submitit's signal (``SIGUSR2``: the time limit is near, or a cluster with
  ``PreemptParameters=send_user_signal`` preempts): submitit's own handler,
  run after the save, requeues the job, counting time limits against
  ``max_num_timeout``.
* ``scancel``, a time limit without submitit, a plain SIGTERM: none of these;
  the job stops (``preempted``: rerun to resume).

A job that Slurm starts again reads ``requeued`` in ``status.json`` until it
runs, its ``metrics.json`` is kept, and its W&B run resumes (same id). A
time limit met more often than ``max_num_timeout`` allows is a failure that
says so (``TimeLimitError``). Requeueing a job from inside on SIGTERM
without asking Slurm would turn every ``scancel`` into a requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

from snnexp.train.signals import Preempted, submitit_signal

log = logging.getLogger(__name__)


class TimeLimitError(RuntimeError):
    """The job met its Slurm time limit more often than ``max_num_timeout`` requeues allow."""


def job_id() -> str | None:
    """This Slurm job's id (``<array job>_<task>`` in an array), or None outside Slurm."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def job_info(job: str) -> dict[str, str]:
    """``scontrol show job`` of ``job`` as ``{field: value}`` (``{}`` when Slurm does not answer)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("scontrol show job %s failed (%s)", job, e)
        return {}
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _submitit_handler() -> Any:
    """The requeueing signal handler (``SignalHandler.checkpoint_and_try_requeue``), or None."""
    if submitit_signal() is None:
        return None
    handler = signal.getsignal(submitit_signal())
    owner = getattr(handler, "__self__", None)
    if owner is not None and type(owner).__name__ == "SignalHandler" and "submitit" in type(owner).__module__:
        return handler
    return None


def _requeued_by_slurm(info: dict[str, str]) -> bool:
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)  # at this run's start
    return info.get("JobState") != "RUNNING" and int(info.get("Restarts", 0) or 0) > restarts


def _preempting(info: dict[str, str]) -> bool:
    return info.get("JobState") == "RUNNING" and info.get("PreemptTime", "None") not in ("None", "Unknown", "")


def hand_back(stop: Preempted, record: Any, timeouts: dict[str, Any] | None = None) -> bool:
    """After a save on ``stop``, makes Slurm run this job again where that is what the signal meant.

    Args:
        stop: the ``Preempted`` the training loop raised after saving.
        record: the job's ``RunDir`` (its status becomes ``requeued``).
        timeouts: ``timeout_min`` and ``max_num_timeout`` of the launcher, for the error of an exhausted budget.

    Returns:
        True when the job is requeued (submitit's handler may instead exit the process, as it always does);
        False when it just stops.

    Raises:
        TimeLimitError: submitit refused to requeue a job that timed out too often.
    """
    job = job_id()
    if job is None:
        return False
    signum, name = stop.signum, signal.Signals(stop.signum).name
    saved = f"stopped by {name} {stop.where}".rstrip()
    info = {} if signum == submitit_signal() else job_info(job)
    if _requeued_by_slurm(info):
        record.requeued(f"{saved}; Slurm requeued job {job}")
        log.warning("%s, saved; Slurm requeues job %s", saved, job)
        return True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a requeue signals this job again: nothing is left to save
    handler = _submitit_handler()
    if signum == submitit_signal() and handler is not None:
        record.requeued(f"{saved}; time limit near or preempted: submitit requeues job {job}")  # it then exits
        log.warning("%s, saved; submitit requeues job %s", saved, job)
        try:
            handler(signum, None)  # checkpoints the submission, scontrol requeue, sys.exit
        except Exception as e:
            if "timed-out too many times" not in str(e):
                raise
            t = timeouts or {}
            raise TimeLimitError(
                f"job {job} reached its Slurm time limit (hydra.launcher.timeout_min={t.get('timeout_min')}) "
                f"more often than hydra.launcher.max_num_timeout={t.get('max_num_timeout')} requeues allow; "
                f"saved {stop.where}: raise either and rerun the same multirun to resume") from None
        return True
    if not _preempting(info):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return False  # scancel, a time limit, a plain SIGTERM: the job stops
    # Preempted with a grace time: requeue now (a preemption does not count against max_num_timeout; the
    # submission submitit pickled is the same one, and the job resumes from its directory).
    try:
        subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("scontrol requeue %s failed (%s): the job stops", job, getattr(e, "stderr", "") or e)
        return False
    record.requeued(f"{saved}; preempted: requeued job {job}")
    log.warning("%s, saved; preempted (PreemptTime %s): requeued job %s", saved, info.get("PreemptTime"), job)
    return True
