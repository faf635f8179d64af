"""Sweeps, requeues, preemption and time limits on a real Slurm cluster.

Run where ``sinfo`` answers (``bash tests/slurm/cluster.sh up``, a single
node with the partitions debug, grace and urgent), one test at a time:
``pytest -m slurm -n 0 -s``. Each test compares the final metrics and every
history row with an uninterrupted run of the same config, and prints how long
it took and where its jobs resumed. Nothing of Slurm, submitit or Hydra is
mocked: the jobs are real sbatch array tasks, stopped by ``scontrol requeue``,
by a higher-priority job and by their time limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sinfo_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not _sinfo_answers(), reason="no Slurm cluster (sinfo does not answer): "
                       "bash tests/slurm/cluster.sh up starts one"),
]

# ~0.5 s an epoch on 2 cores, a checkpoint after each: long enough to be stopped in the middle.
MEDIUM = ["data.steps=64", "model.hidden=[384]", "trainer.steps_per_call=2", "trainer.epochs=10", "quant=w8a8",
          "mode=ptq"]
# ~90 s of training (~0.45 s an epoch): longer than a job with timeout_min=1 runs before its SIGUSR2
# (25 to 55 s in). 80 epochs (~50 s) finished before a late signal on quiet cores, and the
# max_num_timeout=0 job then ended ok.
LONG = [*MEDIUM[:-3], "trainer.epochs=200", "quant=w8a8", "mode=ptq"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
         "hydra.launcher.timeout_min=10"]
# wall-clock and compilation counts differ between processes; everything else must not
TIMING = {"train_time_s", "steps_per_s", "run_time_s", "compile_time_s", "compilations", "compile_cache_hits"}
ENV = {**os.environ, "WANDB_MODE": "offline", "SNNEXP_PROGRESS": "0"}


def multirun(sweep: Path, *overrides: str) -> subprocess.Popen:
    """Starts ``python -m snnexp -m ... hydra.sweep.dir=sweep`` (it returns when every job has ended)."""
    return subprocess.Popen([sys.executable, "-m", "snnexp", "-m", *overrides, f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the launcher did not end in {timeout} s:\n{out[-4000:]}")
    return out


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def history(job: Path) -> list[dict]:
    return [json.loads(r) for r in (job / "history.jsonl").read_text().splitlines() if r.strip()]


def without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in TIMING}


def wait_rows(job: Path, rows: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Waits until the job's ``history.jsonl`` holds ``rows`` epochs (it is mid-way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (job / "history.jsonl").exists() and len(history(job)) >= rows:
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before epoch {rows} of {job}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{job} did not reach epoch {rows} in {timeout} s")


def slurm_job(sweep: Path, task: int = 0) -> str:
    """The Slurm id (``<array>_<task>``) of a task of the sweep, from submitit's folder."""
    names = [p.name for p in (sweep / ".submitit").iterdir()]
    ids = [n for n in names if re.fullmatch(rf"\d+_{task}", n)] or [n for n in names if n.isdigit()]
    assert len(ids) == 1, names  # a one-job sweep is no array: its folder is the job id
    return ids[0]


def job_log(sweep: Path, task: int = 0) -> str:
    """Every line the task wrote, in every run of it (submitit's logs, appended to on each requeue)."""
    folder = sweep / ".submitit" / slurm_job(sweep, task)
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_log.*")))


def wait_status(job: Path, status: str, timeout: float = 120) -> float:
    """Waits until ``status.json`` reads ``status``; returns when (``time.time()``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if read(job / "status.json").get("status") == status:
                return time.time()
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{job} never read {status!r}: {(job / 'status.json').read_text()}")


def sacct(job: str, fields: str = "State,Start,Submit,Elapsed") -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", fields], capture_output=True, text=True,
                         timeout=30).stdout
    return out.strip().splitlines()[0].split("|") if out.strip() else []


def resumed_at(log: str) -> list[str]:
    return re.findall(r"\[fp32\] resumed at epoch \d+ step \d+", log)


def assert_equal_to(job: Path, reference: Path) -> None:
    assert read(job / "status.json") == {"status": "ok"}
    assert without_timing(read(job / "metrics.json")) == without_timing(read(reference / "metrics.json"))
    assert history(job) == history(reference)  # every epoch's row, once, bit-identical on CPU


def figure(text: str) -> None:
    print(f"\nslurm figures: {text}", file=sys.stderr)


def background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snnexp", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted runs, started at once when the first test needs them (they run while it runs).

    ``basic``: the ptq jobs of the first test's sweep through the basic launcher (its job 0 is the
    preemption tests' reference too); ``long``: a single run of the time-limit test's config.
    """
    root = tmp_path_factory.mktemp("references")
    procs = {
        "basic": (background("-m", "logger=none", *MEDIUM, "trainer.batch_size=64,0",
                             f"hydra.sweep.dir={root / 'basic'}"), 1),  # exits 1: two bad jobs
        "long": (background("logger=none", *LONG, f"hydra.run.dir={root / 'long'}"), 0),
    }

    def wait(name: str) -> Path:
        proc, rc = procs[name]
        if proc.returncode is None:
            out = finish(proc)
            assert proc.returncode == rc, out[-3000:]
        return root / name

    yield wait
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


def test_a_sweep_with_a_requeued_a_killed_and_bad_jobs_matches_the_basic_launcher(references, tmp_path):
    t0 = time.time()
    proc = multirun(tmp_path, *SLURM, "logger=none", *MEDIUM, "mode=ptq,qat", "trainer.batch_size=64,0")
    wait_rows(tmp_path / "0", 2, proc)
    job = slurm_job(tmp_path, 0)
    assert sacct(job, "JobName")[0].startswith("snnexp-")  # named after the sweep, not __main__
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    t_requeue = time.time()
    t_mark = wait_status(tmp_path / "0", "requeued")
    wait_rows(tmp_path / "2", 1, proc)
    killed = slurm_job(tmp_path, 2)
    os.kill(read(tmp_path / "2" / "status.json")["pid"], signal.SIGKILL)  # dies outright (the OOM killer, say)
    out = finish(proc)
    took = time.time() - t0
    assert proc.returncode == 1, out[-4000:]  # three jobs failed: reported once all four had ended
    summary = out[out.index("snnexp sweep"):]
    assert "1 of 4 jobs ok" in summary
    error = "ConfigError: trainer.batch_size=0 must be an integer >= 1"
    for num in (1, 3):  # refused with its one-line error and its metrics.json; the others ran
        assert read(tmp_path / str(num) / "status.json")["status"] == "failed"
        assert read(tmp_path / str(num) / "metrics.json") == {"status": "failed", "error": error}
        assert re.search(rf"^\s*{num} .*failed.*{re.escape(error)}", summary, flags=re.M), summary
    died = read(tmp_path / "2" / "status.json")
    assert died["status"] == "failed" and died["error"].startswith(f"Slurm job {killed} ended without a result")
    assert re.search(rf"^\s*2 .*failed.*Slurm job {killed} ended without a result", summary, flags=re.M), summary
    reference = references("basic")
    assert_equal_to(tmp_path / "0", reference / "0")
    assert read(reference / "1" / "metrics.json") == {"status": "failed", "error": error}
    where = resumed_at(job_log(tmp_path, 0))
    assert len(where) == 1, job_log(tmp_path, 0)[-3000:]
    assert "Traceback" not in out
    figure(f"sweep of 4 jobs (2 refused, 1 killed by SIGKILL), job 0 requeued by scontrol: "
           f"{took:.1f} s in all; status requeued {t_mark - t_requeue:.1f} s after the requeue; {where[0]}; "
           "metrics and history equal to the basic launcher's")


def test_preemption_with_and_without_grace_time_resumes_and_ends_equal(references, tmp_path):
    reference = references("basic") / "0"
    sweeps = {"debug": tmp_path / "nograce", "grace": tmp_path / "grace"}  # GraceTime=0 and GraceTime=30
    t0 = time.time()
    procs = {part: multirun(sweep, *SLURM, f"hydra.launcher.partition={part}", "logger=wandb", *MEDIUM,
                            "trainer.batch_size=64")
             for part, sweep in sweeps.items()}
    for part, sweep in sweeps.items():
        wait_rows(sweep / "0", 2, procs[part])
    run_ids = {part: (sweep / "0" / "wandb_id.txt").read_text() for part, sweep in sweeps.items()}
    t_preempt = time.time()
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "--exclusive", "-o", str(tmp_path / "u.out"),
                             "--wrap", "sleep 1"], capture_output=True, text=True, check=True,
                            timeout=30).stdout.strip()
    marked = {part: wait_status(sweep / "0", "requeued") - t_preempt for part, sweep in sweeps.items()}
    outs = {part: finish(p) for part, p in procs.items()}
    took = time.time() - t0
    state, start, submit, _ = sacct(urgent)
    waited = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S")) - time.mktime(
        time.strptime(submit, "%Y-%m-%dT%H:%M:%S"))
    assert state == "COMPLETED"
    # the grace job handed its node back at once: the urgent job did not wait for the 30 s grace time
    assert waited < 25, waited
    notes = []
    for part, sweep in sweeps.items():
        assert procs[part].returncode == 0, outs[part][-4000:]
        assert_equal_to(sweep / "0", reference)
        log = job_log(sweep, 0)
        where = resumed_at(log)
        assert len(where) == 1, log[-3000:]
        # the W&B run continues: every offline segment carries the same run id
        segments = sorted((sweep / "0" / "wandb").glob("offline-run-*"))
        assert len(segments) == 2 and all(p.name.endswith(run_ids[part]) for p in segments)
        notes.append(f"{part}: requeued {marked[part]:.1f} s after the urgent job came, {where[0]}")
    figure(f"preemption (GraceTime=0 and 30, at once): {took:.1f} s in all; the urgent job waited {waited:.0f} s; "
           f"{'; '.join(notes)}; metrics, history equal, one W&B run each")


def test_a_time_limit_requeues_and_resumes_and_an_exhausted_budget_fails_in_one_line(references, tmp_path):
    # Slurm sends the signal at its first time-limit check (every 30 s) less than signal_delay_s + 30 s before the
    # end: SIGUSR2 25 to 55 s into each run of the job, which Slurm kills at 60 s.
    references("long")  # not competing for the cores
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5"]
    t0 = time.time()
    retried = multirun(tmp_path / "retried", *SLURM, *limit, "hydra.launcher.max_num_timeout=3", "logger=none",
                       *LONG)
    exhausted = multirun(tmp_path / "exhausted", *SLURM, *limit, "hydra.launcher.max_num_timeout=0",
                         "logger=none", *LONG)
    out = finish(exhausted)
    t_exhausted = time.time() - t0
    job_dir = tmp_path / "exhausted" / "0"
    assert exhausted.returncode == 1, out[-4000:]
    status = read(job_dir / "status.json")
    assert status["status"] == "failed"
    error = status["error"]
    assert error.startswith("TimeLimitError: ") and "\n" not in error, error
    assert "hydra.launcher.max_num_timeout=0" in error and "timeout_min=1" in error, error
    assert read(job_dir / "metrics.json")["status"] == "failed"
    assert error[:80] in out  # the sweep's table shows it
    assert not list(job_dir.rglob("*tmp*")), list(job_dir.rglob("*tmp*"))  # no save was cut short

    out = finish(retried)
    took = time.time() - t0
    assert retried.returncode == 0, out[-4000:]
    assert_equal_to(tmp_path / "retried" / "0", references("long"))
    log = job_log(tmp_path / "retried", 0)
    where = resumed_at(log)
    assert where, log[-3000:]
    assert "timed-out" in log and "Requeued job" in log
    assert not list((tmp_path / "retried" / "0").rglob("*tmp*"))
    figure(f"time limit 1 min, 200-epoch job: {took:.1f} s, {len(where)} requeue(s), "
           f"{', '.join(where)}; metrics and history equal; max_num_timeout=0: failed in one line after "
           f"{t_exhausted:.1f} s, no tmp checkpoint")
