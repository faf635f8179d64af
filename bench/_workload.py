"""The reference workload of ``bench/perf.py``, shared by snnexp and Spyx workers.

SHD-shaped synthetic spikes (700 channels, Bernoulli p = 0.05, T = 100),
batches of 256, 20 classes, a ``Linear(700, H) -> LIF(H) -> Linear(H, 20) ->
LI`` network trained with Adam on the softmax cross-entropy of the
time-averaged LI readout. Both frameworks get the same data (same seed), the
same initial weights (``nnx.Rngs(0)``, same layer order), the same optimizer
(Adam with the cosine schedule of ``conf/optim/adam.yaml``) and the same loss.

Only numpy is imported at module level: the workers time their own imports.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FEATURES = 700  # SHD cochlear channels
STEPS = 100  # T
CLASSES = 20
BATCH = 256
P_SPIKE = 0.05
SEED = 0

# conf/optim/adam.yaml, conf/neuron/lif.yaml, conf/surrogate/superspike.yaml,
# conf/model/feedforward.yaml: what the snnexp workers compose; the Spyx
# workers build the same objects by hand.
LR = 0.003
FINAL_LR_FRACTION = 0.05
LIF_BETA = 0.9
LIF_THRESHOLD = 1.0
SUPERSPIKE_K = 25
READOUT_BETA = 0.9


# ------------------------------------------------------------------ FLOPs


def flops_per_step(hidden: int, batch: int = BATCH, steps: int = STEPS, recurrent: bool = False) -> dict[str, float]:
    """Analytic matmul FLOPs of one training step (XLA's cost analysis counts a scan body once).

    ``forward = 2*B*T*(F*H + H*C)`` for the two projections (plus ``2*B*T*H*H``
    for the recurrent matrix with ``recurrent``); the elementwise neuron
    dynamics are not counted.

    * ``train``: ``3 * forward`` (backward taken as 2x forward: the usual
      convention);
    * ``train_exact``: what the backward really needs, ``2*B*T*(2*F*H + 3*H*C)``
      (weight gradients of both projections, the input gradient of the
      readout only: the input spikes need no gradient; the recurrent matrix
      needs both, ``+ 3 * 2*B*T*H*H``), about 2/3 of ``train``; the ceiling
      target uses this count.
    """
    f, c = FEATURES, CLASSES
    rec = 2.0 * batch * steps * hidden * hidden if recurrent else 0.0
    fwd = 2.0 * batch * steps * (f * hidden + hidden * c) + rec
    exact = 2.0 * batch * steps * (2 * f * hidden + 3 * hidden * c) + 3 * rec
    return {"forward": fwd, "train": 3.0 * fwd, "train_exact": exact}


def eval_flops_per_sample(hidden: int, steps: int = STEPS) -> float:
    """Forward matmul FLOPs of one sample."""
    return 2.0 * steps * (FEATURES * hidden + hidden * CLASSES)


# ------------------------------------------------------------------- data


def make_data(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """SHD-shaped Bernoulli spikes ``x [n, T, 700]`` float32 and labels ``y [n]`` int32.

    Drawn in chunks of 256 samples (float32 uniforms), so memory stays at the
    size of the result (``4*n*T*700`` bytes: 2.3 GB for 8192 samples).
    """
    rng = np.random.default_rng(seed)
    x = np.empty((n, STEPS, FEATURES), np.float32)
    for i in range(0, n, 256):
        k = min(256, n - i)
        np.less(rng.random((k, STEPS, FEATURES), dtype=np.float32), P_SPIKE, out=x[i:i + k])
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    return x, y


def epoch_perm(n: int, epoch: int, batch: int = BATCH, seed: int = SEED) -> np.ndarray:
    """Batch indices ``[n // batch, batch]`` of one epoch, as ``snnexp.train.epoch_perm`` draws them.

    A copy, so that the Spyx side imports nothing of snnexp; the snnexp worker checks they are equal.
    """
    rng = np.random.default_rng([seed, 0, epoch])
    steps = n // batch
    return rng.permutation(n)[: steps * batch].reshape(steps, batch).astype(np.int32)


# --------------------------------------------------------------- snnexp side


def snnexp_config(hidden: int, quant: str = "fp32", mode: str = "qat", model: str = "feedforward"):
    """The run config ``python -m snnexp`` would compose for this workload (``model``: a
    ``conf/model`` option, ``feedforward`` or ``recurrent``)."""
    from hydra import compose, initialize_config_dir

    overrides = [
        f"quant={quant}",
        f"mode={mode}",
        f"model={model}",
        f"model.hidden=[{hidden}]",
        "neuron=lif",
        "surrogate=superspike",
        "optim=adam",
        f"trainer.batch_size={BATCH}",
        "logger=none",
        "compile_cache=null",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# ----------------------------------------------------------------- Spyx side


def spyx_model(hidden: int, recurrent: bool = False):
    """``spyx.nn.Sequential(Linear, LIF, Linear, LI)``: the same network, Spyx-native.

    ``recurrent``: ``RLIF`` in place of ``LIF`` (spikes fed back through a
    ``[H, H]`` matrix), the layer snnexp's ``model=recurrent`` computes with
    ``neuron=lif``; its weights start differently from snnexp's (Spyx's
    truncated-normal recurrent matrix, another draw order), which does not
    change the work.

    Otherwise built in the order snnexp builds its layers from
    ``nnx.Rngs(0)``, so the feed-forward weights start equal. Spyx's neurons are left exactly as Spyx makes
    them (their weakly typed ``beta`` included: that is Spyx's own path).
    """
    import spyx
    from flax import nnx

    rngs = nnx.Rngs(SEED)
    fc = nnx.Linear(FEATURES, hidden, rngs=rngs)
    neuron = spyx.nn.RLIF if recurrent else spyx.nn.LIF
    lif = neuron((hidden,), beta=LIF_BETA, threshold=LIF_THRESHOLD,
                 activation=spyx.axn.superspike(k=SUPERSPIKE_K), rngs=rngs)
    readout = nnx.Linear(hidden, CLASSES, rngs=rngs)
    li = spyx.nn.LI((CLASSES,), beta=READOUT_BETA, rngs=rngs)
    return spyx.nn.Sequential(fc, lif, readout, li)


def spyx_loss(model, x, y):
    """Softmax cross-entropy on the time-mean of the LI trace (snnexp's loss).

    ``spyx.nn.run(..., batch_major=True)``: ``x [B, T, F]`` -> traces ``[B, T, C]``.
    """
    import optax
    import spyx

    traces, _ = spyx.nn.run(model, x, batch_major=True)
    logits = traces.mean(axis=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def spyx_loss_time_major(model, x, y):
    """The same loss on Spyx's default, time-major layout: ``x [T, B, F]`` -> traces ``[T, B, C]``.

    ``spyx.nn.run(model, x)`` scans over the leading axis as it comes: no
    transpose of the batch in or out of the scan (the batches are staged
    time-major once, before training).
    """
    import optax
    import spyx

    traces, _ = spyx.nn.run(model, x)
    logits = traces.mean(axis=0)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def snnexp_cli_args(hidden: int, samples: int, epochs: int, model: str = "feedforward") -> list[str]:
    """``python -m snnexp`` overrides that train this workload as a user's run does (fp32, then PTQ).

    ``data=synthetic`` at the workload's shapes (its spikes have class-specific
    rates instead of 0.05: the dense matmuls do the same work), a test split of
    a quarter of the training samples (SHD's proportion) evaluated after every
    epoch, a checkpoint every epoch (the default), W&B off.
    """
    return [
        "data=synthetic", f"data.n_train={samples}", f"data.n_test={samples // 4}", f"data.steps={STEPS}",
        f"data.features={FEATURES}", f"data.n_classes={CLASSES}",
        f"model={model}", f"model.hidden=[{hidden}]", "neuron=lif", "surrogate=superspike", "optim=adam",
        f"trainer.batch_size={BATCH}", f"trainer.epochs={epochs}", "quant=fp32", "mode=ptq",
        # the default evaluation batch (512) is refused when it equals a square layer's width (qwix could
        # not tell the recurrent H x H weight from its input): the run asks for another, as a user would
        f"trainer.eval_batch_size={256 if model == 'recurrent' and hidden == 512 else 512}",
        "logger=none", "compile_cache=null", "fp32_cache=false",  # a run that trains: nothing reused
    ]


def adam(total_steps: int):
    """Adam with the cosine decay of ``conf/optim/adam.yaml`` (what ``build.optimizer`` returns)."""
    import optax

    schedule = optax.cosine_decay_schedule(LR, max(total_steps, 1), alpha=FINAL_LR_FRACTION)
    return optax.adam(learning_rate=schedule)


# -------------------------------------------------------------- bookkeeping


def versions() -> dict[str, str]:
    """Versions of the measured stack and the snnexp commit (``+dirty`` when modified)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "spyx", "qwix", "optax", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        out["snnexp"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["snnexp"] = "unknown"
    return out


def machine() -> dict[str, Any]:
    """CPU count, model and the load average now."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu": model,
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
