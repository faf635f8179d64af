"""One interface for the local record and Weights & Biases.

Every number goes to ``history.jsonl`` in the run directory first; W&B gets
the same numbers when it is on. W&B runs offline unless the environment
provides an API key or sets ``WANDB_MODE``, so a run never waits for a
network; ``wandb sync`` uploads an offline run later. If W&B fails (at init
or while logging) the run goes on with its local record and says so.

``wandb.init`` (and the import of ``wandb``) takes seconds; it runs in a
background thread while the run builds and compiles, and the first call that
needs the W&B run waits for it.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import secrets
import string
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flax import traverse_util

log = logging.getLogger(__name__)


def has_api_key() -> bool:
    """Whether W&B would find an API key: ``WANDB_API_KEY``, or ``wandb login``'s entry in ``~/.netrc``.

    The netrc entry is the one for the host of ``WANDB_BASE_URL`` (default
    ``api.wandb.ai``), as W&B itself looks it up; ``NETRC`` names another file.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(requested: str | None) -> str:
    """Picks the W&B mode: the config's, else ``WANDB_MODE``, else online with an API key, offline without."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() else "offline"


def _new_run_id() -> str:
    """A W&B-style run id: 8 lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _clean(value: Any) -> Any:
    """JSON-safe value: NaN and inf become None, arrays become numbers."""
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Tracker:
    """Writes per-epoch history and the final summary locally and to W&B."""

    def __init__(
        self,
        out_dir: Path,
        config: dict,
        *,
        backend: str = "none",
        project: str = "snnexp",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        mode: str | None = None,
        resume_step: int = 0,
    ):
        """Opens the local history file and, for ``backend="wandb"``, a W&B run.

        Args:
            out_dir: the run directory.
            config: the resolved config (plain dict), stored with the W&B run.
            backend: ``"wandb"`` or ``"none"``.
            project: W&B project.
            entity: W&B entity (team or user), or None for the default.
            group: W&B group (a sweep reads as one group).
            name: W&B run name.
            tags: W&B tags.
            mode: W&B mode (``online``, ``offline``, ``disabled``), or None.
            resume_step: history rows after this step are dropped (they were
                logged after the checkpoint a resumed run continues from).
        """
        self.out_dir = Path(out_dir)
        self.history_path = self.out_dir / "history.jsonl"
        self._run = None
        self._starting: threading.Thread | None = None
        self._pending: list[tuple[dict, int]] = []  # rows logged while W&B starts
        self._trim_history(resume_step)
        if backend not in ("wandb", "none"):
            raise ValueError(f"logger.backend={backend!r}; valid choices: ['wandb', 'none']")
        if backend == "wandb":
            def start() -> None:
                self._run = self._init_wandb(config, project, entity, group, name, list(tags), mode)

            self._starting = threading.Thread(target=start, name="wandb-init", daemon=True)
            self._starting.start()

    @property
    def run(self) -> Any:
        """The W&B run (None without W&B, or after it failed to start); waits for its start the first time.

        Rows logged while it was starting are sent to it first, in order.
        """
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            pending, self._pending = self._pending, []
            for metrics, step in pending if self._run is not None else ():
                self._wandb_log(metrics, step)
        return self._run

    def _trim_history(self, keep_until: int) -> None:
        if not self.history_path.exists():
            return
        rows = [r for r in self.history_path.read_text().splitlines() if r.strip()]
        kept = [r for r in rows if json.loads(r).get("step", 0) <= keep_until]
        if len(kept) != len(rows):
            self.history_path.write_text("".join(r + "\n" for r in kept))

    def _init_wandb(self, config, project, entity, group, name, tags, mode):
        id_path = self.out_dir / "wandb_id.txt"
        try:
            import wandb

            resolved_mode = wandb_mode(mode)
            run_id = id_path.read_text().strip() if id_path.exists() else _new_run_id()
            id_path.write_text(run_id)
            run = wandb.init(
                id=run_id,
                resume="allow",
                project=project,
                entity=entity,
                group=group,
                name=name,
                tags=tags,
                config=config,
                dir=str(self.out_dir),
                mode=resolved_mode,
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=90, console="off", silent=True),
            )
            log.info("W&B run %s (%s) in %s", run.id, resolved_mode, run.dir)
            return run
        except Exception as e:  # noqa: BLE001 - W&B must never stop a run
            log.warning("W&B init failed (%s: %s); continuing with the local record only",
                        type(e).__name__, e)
            return None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Records one row of history (per epoch); W&B gets it now, or once it has started."""
        row = _clean({"step": step, **metrics})
        with self.history_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._starting is not None and self._starting.is_alive():
            self._pending.append((dict(metrics), step))  # training does not wait for W&B's start
        elif self.run is not None:
            self._wandb_log(dict(metrics), step)

    def _wandb_log(self, metrics: dict, step: int) -> None:
        try:
            self._run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B log failed (%s); the local record has it", e)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Sets the final summary of the W&B run (the local one is metrics.json)."""
        if self.run is not None:
            try:
                self.run.summary.update(_clean(dict(flatten(metrics))))
            except Exception as e:  # noqa: BLE001
                log.warning("W&B summary failed (%s); metrics.json has it", e)

    def log_checkpoint(self, path: Path, name: str) -> None:
        """Logs a checkpoint directory as a W&B model artifact (off by default)."""
        if self.run is not None:
            try:
                import wandb

                artifact = wandb.Artifact(name, type="model")
                artifact.add_dir(str(path))
                self.run.log_artifact(artifact)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B artifact upload failed (%s); the checkpoint is in %s", e, path)

    def fail(self, error: str, *, preempted: bool = False) -> None:
        """Records a failed (or preempted) run in W&B and closes it."""
        if self.run is not None:
            try:
                if preempted:
                    self.run.mark_preempting()
                self.run.summary.update({"status": "preempted" if preempted else "failed", "error": error})
            except Exception as e:  # noqa: BLE001
                log.warning("W&B failure record failed (%s)", e)
        self.finish(exit_code=1)

    def finish(self, exit_code: int = 0) -> None:
        """Closes the W&B run (before the next job of a sweep starts); says how to upload an offline one."""
        if self.run is not None:
            offline = bool(getattr(self.run, "offline", False) or getattr(self.run.settings, "_offline", False))
            run_dir = Path(self.run.dir).parent  # <out>/wandb/offline-run-<time>-<id>
            try:
                self.run.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B finish failed (%s)", e)
            self._run = None
            if offline:
                log.info("W&B run saved offline; upload it with: wandb sync %s", run_dir)


def flatten(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``{"spike_rate": {"mean": r}}`` -> ``{"spike_rate/mean": r}``."""
    return traverse_util.flatten_dict(dict(metrics), sep="/")


clean = _clean
