"""Hyperparameter searches that resume: a seeded TPE sampler whose random stream continues.

A persistent optuna study (``conf/hparams_search``: SQLite in the sweep
directory) is resumed by rerunning the search. A plain seeded
``TPESampler`` starts its random stream afresh in the new process and so
proposes the same first points again (the finished runs are then reused, and
nothing new is explored). ``ResumableTPESampler`` seeds its streams with
``seed + (trials already in the study)`` at its first proposal, so a resumed
search is reproducible and continues with new points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import RandomSampler, TPESampler


class ResumableTPESampler(TPESampler):
    """``optuna.samplers.TPESampler`` reseeded by how many trials its study already holds."""

    def __init__(self, seed: int | None = None, **kwargs: Any):
        """``seed`` and every other argument as for ``TPESampler``."""
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed
        self._seeded = seed is None

    def _continue_stream(self, study: optuna.Study) -> None:
        if self._seeded:
            return
        # the trial being proposed is in the study already: count the ones before it
        seed = int(self._base_seed) + max(len(study.trials) - 1, 0)
        self._rng = np.random.RandomState(seed)
        self._random_sampler = RandomSampler(seed=seed)
        self._seeded = True

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """As TPE's, after continuing the random stream of a resumed study."""
        self._continue_stream(study)
        return super().infer_relative_search_space(study, trial)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """As TPE's, after continuing the random stream of a resumed study."""
        self._continue_stream(study)
        return super().sample_independent(study, trial, param_name, param_distribution)
