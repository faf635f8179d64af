"""How a stopped job reads Slurm's answer (``snnexp.slurm``), on ``scontrol show job`` lines Slurm 22.05 printed.

The lines were recorded on the cluster of ``tests/slurm/cluster.sh`` at the
moment the job got SIGTERM; ``tests/test_slurm.py`` runs the whole protocol
against the real daemons.
"""

from __future__ import annotations

import signal

import pytest

from snnexp import slurm
from snnexp.rundir import RunDir
from snnexp.train.signals import Preempted, stop_signals

# JobState, Restarts and PreemptTime at the SIGTERM of each case (SLURM_RESTART_COUNT unset: a first run)
SEEN = {
    "scontrol requeue": "JobId=8 JobState=COMPLETING Reason=None Requeue=1 Restarts=1 PreemptTime=None EndTime=Unknown",
    "preempted, GraceTime=0": "JobId=15 JobState=COMPLETING Reason=None Restarts=1 PreemptTime=None",
    "preempted, GraceTime=30": "JobId=20 JobState=RUNNING Reason=None Restarts=0 PreemptTime=2026-12-02T01:32:52",
    "scancel": "JobId=10 JobState=COMPLETING Reason=None Restarts=0 PreemptTime=None EndTime=2026-12-02T01:29:56",
    "scancel --signal=TERM": "JobId=11 JobState=RUNNING Reason=None Restarts=0 PreemptTime=None",
}


def parse(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


@pytest.mark.parametrize(("case", "by_slurm", "preempting"), [
    ("scontrol requeue", True, False), ("preempted, GraceTime=0", True, False),
    ("preempted, GraceTime=30", False, True), ("scancel", False, False), ("scancel --signal=TERM", False, False),
])
def test_each_stop_is_told_apart(case, by_slurm, preempting, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    info = parse(SEEN[case])
    assert slurm._requeued_by_slurm(info) is by_slurm
    assert slurm._preempting(info) is preempting


def test_a_requeued_job_counts_restarts_from_its_own_start(monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the second run: Restarts=1 is where it started
    assert not slurm._requeued_by_slurm(parse(SEEN["scancel"].replace("Restarts=0", "Restarts=1")))
    assert slurm._requeued_by_slurm(parse(SEEN["scontrol requeue"].replace("Restarts=1", "Restarts=2")))


def test_outside_slurm_nothing_is_handed_back(tmp_path, monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    stop = Preempted(signal.SIGTERM, "stopped by SIGTERM after fp32 epoch 2", "after fp32 epoch 2")
    assert slurm.hand_back(stop, RunDir(tmp_path)) is False
    assert not (tmp_path / "status.json").exists()
    assert stop_signals() == (signal.SIGTERM, signal.SIGINT)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # a submitit Slurm job also stops on submitit's signal
    assert stop_signals() == (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def test_array_tasks_are_named_as_scontrol_knows_them(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "38")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "37")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert slurm.job_id() == "37_1"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert slurm.job_id() == "38"


def test_requeued_keeps_the_metrics(tmp_path):
    rd = RunDir(tmp_path)
    (tmp_path / "metrics.json").write_text('{"status": "ok", "quant_accuracy": 0.9}\n')
    rd.requeued("stopped by SIGTERM after fp32 epoch 2; preempted: requeued job 7")
    assert rd.status() == {"status": "requeued",
                           "reason": "stopped by SIGTERM after fp32 epoch 2; preempted: requeued job 7"}
    assert (tmp_path / "metrics.json").read_text() == '{"status": "ok", "quant_accuracy": 0.9}\n'


@pytest.mark.parametrize(("overrides", "name"), [
    (["sweep=recipes"], "snnexp-recipes"), (["hydra.sweep.dir=outputs/multirun/2026-12-02/01-33-00"],
                                            "snnexp-2026-12-02_01-33-00"),
])
def test_the_slurm_launcher_asks_for_no_gpu_and_names_jobs_after_the_sweep(overrides, name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf

    import snnexp.launch  # noqa: F401 - registers the job-name resolver, as python -m snnexp does
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] is None and launcher["mem_gb"] == 4 and launcher["cpus_per_task"] == 2
    assert launcher["name"] == name
    bases = {f"{c.__module__}.{c.__qualname__}" for c in get_class(launcher["_target_"]).__mro__}
    assert f"{SlurmLauncher.__module__}.SlurmLauncher" in bases  # by name: Hydra's plugin scan may reimport it
