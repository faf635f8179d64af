"""Shared helpers: compose real configs through Hydra's compose API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import pytest
from hydra import compose, initialize_config_dir
from jax.experimental.compilation_cache import compilation_cache
from omegaconf import DictConfig

import snnexp  # noqa: F401  (the config's resolvers)
from snnexp import launch

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The python -m snnexp subprocesses of each xdist worker compile into a persistent cache of the worker's own,
# kept across the suite's sessions, not into the user's cache dir. In-process tests leave the persistent cache
# off (switched on by one test, it stayed on for every later test of the worker).
os.environ.setdefault("SNNEXP_COMPILE_CACHE", os.path.join(
    tempfile.gettempdir(), f"snnexp-test-jax-cache-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))
# The fp32 network cache is off in the tests (every run trains its own, as the tests expect, and nothing is
# shared between tests or sessions); tests/test_fp32_cache.py switches it on with a directory of its own.
os.environ.setdefault("SNNEXP_FP32_CACHE_ON", "false")


def make_cfg(*overrides: str) -> DictConfig:
    """The run config for ``overrides``, as ``python -m snnexp`` composes it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(autouse=True)
def _a_clean_jax_after_the_test():
    """After each test: the persistent compilation cache off again, and compiled programs released if many.

    ``snnexp.launch`` (run in-process by some tests) turns the persistent cache on for the whole process;
    the tests that did not ask for it run without it. An xdist worker of the slow session runs over a
    hundred training runs in one process, and XLA:CPU segfaulted while compiling late in such workers
    (test_run's weights_only-qat twice, test_yinyang's preset, test_train_step): every compiled program
    holds memory maps until JAX's caches drop it, and the worker ran out of ``vm.max_map_count``.
    ``launch.release_compiled_programs`` is what a multirun job does for the same reason.
    """
    yield
    if jax.config.jax_compilation_cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
    launch.release_compiled_programs()


@pytest.fixture
def cfg_factory():
    return make_cfg
