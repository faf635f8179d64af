"""``run(cfg, out_dir)``: the pipeline of one mode, from config to metrics.

The mode decides the pipeline (plain code, no registry):

* ``qat``: fp32 training (or a given fp32 checkpoint), then qwix fake-quant
  and fine-tuning with straight-through gradients;
* ``qt``: quantized training from the start, quantized backward pass;
* ``ptq``: fp32 training (or checkpoint), then integer weights;
* ``srq``: fp32 training (or checkpoint), static activation scales calibrated
  on training batches, then integer weights with those scales.

Every mode ends by converting the network to integer weights (qwix
``PtqProvider``) and evaluating that converted network: ``quant_accuracy`` is
the accuracy of what would be handed to hardware. Jitted steps are pure; the
Python loop owns the cadence (evaluate, log, checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from snnexp import build, checkpoint, metrics, quant, tracking
from snnexp.data import Dataset

log = logging.getLogger(__name__)

MODES = ("qat", "qt", "ptq", "srq")


class ConfigError(ValueError):
    """A configuration that cannot run as written."""


# ----------------------------------------------------------------- jitted steps


def loss_and_logits(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Cross-entropy on the time-averaged LI readout.

    Args:
        model: the network.
        x: inputs ``[B, T, F]``.
        y: labels ``[B]``.

    Returns:
        ``(mean loss, (logits [B, C], rates [B, T, L]))``.
    """
    readout, rates = model(x)
    logits = readout.mean(axis=1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, rates)


@nnx.jit
def train_step(model: nnx.Module, opt: nnx.Optimizer, xs: jax.Array, ys: jax.Array, idx: jax.Array):
    """One optimizer step on the batch ``xs[idx]`` (data stay on the device).

    Args:
        model: the network, updated in place.
        opt: its optimizer, updated in place.
        xs: all training inputs ``[N, T, F]``.
        ys: all training labels ``[N]``.
        idx: batch indices ``[B]``.

    Returns:
        The batch loss (a device scalar; fetched once per epoch).
    """
    grad_fn = nnx.value_and_grad(loss_and_logits, has_aux=True)
    (loss, _), grads = grad_fn(model, xs[idx], ys[idx])
    opt.update(model, grads)
    return loss


@nnx.jit
def eval_step(model: nnx.Module, xs: jax.Array, ys: jax.Array, idx: jax.Array, mask: jax.Array):
    """Sums of correct predictions, loss and spike rates over a padded batch.

    Args:
        model: the network.
        xs: all inputs ``[N, T, F]``; ys: labels ``[N]``.
        idx: batch indices ``[B]`` (the last batch padded with index 0).
        mask: 1.0 for real samples, 0.0 for padding ``[B]``.

    Returns:
        ``(correct, loss_sum, rate_sum [L])`` summed over the real samples.
    """
    x, y = xs[idx], ys[idx]
    readout, rates = model(x)
    logits = readout.mean(axis=1)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = ((jnp.argmax(logits, -1) == y) * mask).sum()
    rate_sum = (rates.mean(axis=1) * mask[:, None]).sum(axis=0)
    return correct, (losses * mask).sum(), rate_sum


@nnx.jit
def calibrate_step(model: nnx.Module, xs: jax.Array, idx: jax.Array) -> None:
    """Updates qwix's static activation statistics on one batch."""
    model(xs[idx], loop="carry")


# ------------------------------------------------------------------- the loop


@dataclass
class Arrays:
    """A data set resident on the device."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array

    @classmethod
    def put(cls, d: Dataset) -> Arrays:
        return cls(*(jax.device_put(a) for a in (d.x_train, d.y_train, d.x_test, d.y_test)))


def evaluate(model: nnx.Module, arrays: Arrays, batch_size: int) -> dict[str, Any]:
    """Accuracy, loss and per-layer spike rates on the whole test set.

    The last batch is padded and masked, so no sample is dropped and every
    batch has one shape (one compilation).
    """
    n = arrays.x_test.shape[0]
    bs = min(batch_size, n)
    n_batches = -(-n // bs)
    idx = np.zeros(n_batches * bs, np.int32)
    idx[:n] = np.arange(n)
    mask = (np.arange(n_batches * bs) < n).astype(np.float32)
    results = [
        eval_step(model, arrays.x_test, arrays.y_test, idx[i * bs:(i + 1) * bs], mask[i * bs:(i + 1) * bs])
        for i in range(n_batches)
    ]
    correct, loss, rates = jax.device_get(jax.tree.map(lambda *a: sum(a), *results))
    layer_rates = np.asarray(rates) / n
    return {
        "accuracy": float(correct) / n,
        "loss": float(loss) / n,
        "spike_rate": {**{f"layer_{i}": float(r) for i, r in enumerate(layer_rates)},
                       "mean": float(layer_rates.mean())},
    }


@dataclass
class FitResult:
    """What a training phase took."""

    steps: int
    seconds: float


def fit(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    arrays: Arrays,
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    phase: str,
    tracker: tracking.Tracker,
    step0: int,
) -> FitResult:
    """Trains ``model`` in place for ``epochs`` and logs every epoch.

    Args:
        model: the network (fp32 or qwix-quantized for QAT/QT).
        tx: the optax optimizer.
        arrays: device-resident data.
        epochs: epochs to run (0 skips).
        batch_size: training batch size (the last partial batch is dropped).
        eval_batch_size: evaluation batch size.
        seed: seeds the shuffling.
        phase: ``"fp32"`` or ``"quant"``: the prefix of logged keys.
        tracker: where epochs are logged.
        step0: global epoch counter at the start (the W&B step).

    Returns:
        Steps taken and seconds spent training (evaluation excluded).
    """
    if epochs <= 0:
        return FitResult(0, 0.0)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    n = arrays.x_train.shape[0]
    steps_per_epoch = n // batch_size
    rng = np.random.default_rng([seed, step0])
    total_steps, train_seconds = 0, 0.0
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        perm = jax.device_put(perm.astype(np.int32))
        t0 = time.perf_counter()
        losses = [train_step(model, opt, arrays.x_train, arrays.y_train, perm[s])
                  for s in range(steps_per_epoch)]
        train_loss = float(jnp.stack(losses).mean())  # one fetch per epoch
        dt = time.perf_counter() - t0
        total_steps += steps_per_epoch
        train_seconds += dt
        ev = evaluate(model, arrays, eval_batch_size)
        row = {
            f"{phase}/train_loss": train_loss,
            f"{phase}/test_loss": ev["loss"],
            f"{phase}/test_accuracy": ev["accuracy"],
            f"{phase}/spike_rate": ev["spike_rate"]["mean"],
            f"{phase}/epoch_time_s": dt,
            "epoch": step0 + epoch,
        }
        tracker.log(row, step=step0 + epoch)
        log.info(
            "[%s] epoch %d/%d  loss %.4f  test acc %.2f%%  spike rate %.3f  %.2fs",
            phase, epoch, epochs, train_loss, 100 * ev["accuracy"], ev["spike_rate"]["mean"], dt,
        )
        if not np.isfinite(train_loss):
            raise FloatingPointError(
                f"[{phase}] training loss is {train_loss} at epoch {epoch}; lower optim.lr "
                "or set optim.grad_clip_norm"
            )
    return FitResult(total_steps, train_seconds)


def calibrate(model: nnx.Module, arrays: Arrays, batches: int, batch_size: int, seed: int) -> int:
    """Runs ``batches`` training batches through a calibration model.

    Returns:
        The number of batches used.
    """
    n = arrays.x_train.shape[0]
    rng = np.random.default_rng([seed, 7])
    used = 0
    for _ in range(batches):
        calibrate_step(model, arrays.x_train, jnp.asarray(rng.choice(n, batch_size, replace=False), jnp.int32))
        used += 1
    model.set_attributes(disable_quant_stats_update=True, raise_if_not_found=False)
    return used


# ------------------------------------------------------------- config checks


def check_config(cfg: DictConfig, rules: list[quant.Rule]) -> None:
    """Rejects a configuration before any data is loaded or compiled."""
    mode = cfg.mode.name
    if mode not in MODES:
        raise ConfigError(f"mode.name={mode!r}; valid choices: {list(MODES)}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        value = cfg.trainer[key]
        if not isinstance(value, int) or value <= 0 and key != "epochs" or value < 0:
            raise ConfigError(f"trainer.{key}={value!r} must be a positive integer")
    if mode == "qt" and cfg.mode.bwd_qtype is not None:
        if cfg.mode.bwd_qtype not in quant.ACT_QTYPES:
            raise ConfigError(
                f"mode.bwd_qtype={cfg.mode.bwd_qtype!r}; valid choices: {list(quant.ACT_QTYPES)} or null"
            )
    if mode == "srq" and rules and not any(r.act_qtype for r in rules):
        log.warning("srq with a weights-only recipe: there are no activation scales to calibrate")
    ckpt = cfg.mode.get("fp32_checkpoint")
    if ckpt and not Path(ckpt).exists():
        raise ConfigError(f"mode.fp32_checkpoint={ckpt!r} does not exist")


def check_shapes(model: nnx.Module, batch_rows: list[int]) -> None:
    """qwix tells weights from activations by shape; a square layer whose
    input rows equal its width is ambiguous and crashes inside qwix."""
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear) and m.in_features == m.out_features and m.in_features in batch_rows:
            name = "/".join(map(str, path))
            raise ConfigError(
                f"layer {name} is {m.in_features}x{m.out_features} and a batch has "
                f"{m.in_features} rows: qwix cannot tell its weight from its input. "
                "Choose another trainer.batch_size / trainer.eval_batch_size."
            )


# ------------------------------------------------------------------ the run


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one composed experiment and records it.

    Args:
        cfg: the composed config (``conf/train.yaml`` and its groups).
        out_dir: the run directory (Hydra's output dir); created if missing.

    Returns:
        The metrics written to ``out_dir/metrics.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rules = quant.parse_recipe(OmegaConf.to_container(cfg.quant.rules, resolve=True))
    check_config(cfg, rules)
    mode = cfg.mode.name
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    data = build.data(cfg)
    model = build.model(cfg, data.features, data.n_classes)
    bs = min(cfg.trainer.batch_size, len(data.x_train))
    ebs = min(cfg.trainer.eval_batch_size, len(data.x_test))
    check_shapes(model, [bs, ebs, 1, bs * data.steps, ebs * data.steps, data.steps])
    sample = jnp.asarray(data.x_train[:1])
    quant.quantize(model, rules, "ptq", sample)  # a rule that matches nothing fails here
    arrays = Arrays.put(data)
    log.info(
        "%s: %d train / %d test, T=%d, F=%d, %d classes | model %s | %s %s",
        data.name, len(data.x_train), len(data.x_test), data.steps, data.features,
        data.n_classes, [data.features, *cfg.model.hidden, data.n_classes], cfg.quant.name, mode,
    )

    tracker = tracking.Tracker(
        out_dir, resolved,
        backend=cfg.logger.backend,
        project=cfg.logger.get("project", "snnexp"),
        entity=cfg.logger.get("entity"),
        group=cfg.logger.get("group"),
        name=cfg.logger.get("name"),
        tags=[f"quant:{cfg.quant.name}", f"mode:{mode}", f"neuron:{cfg.neuron.name}",
              f"data:{cfg.data.name}", *cfg.logger.get("tags", [])],
        mode=cfg.logger.get("mode"),
    )
    ok = False
    try:
        result = _pipeline(cfg, rules, model, arrays, data, sample, bs, ebs, tracker, out_dir)
        tracker.summary(result)
        ok = True
    finally:
        tracker.finish(exit_code=0 if ok else 1)
    (out_dir / "metrics.json").write_text(json.dumps(tracking.clean(result), indent=2) + "\n")
    log.info("results\n%s", results_table(result))
    return result


def _pipeline(cfg, rules, model, arrays, data, sample, bs, ebs, tracker, out_dir) -> dict[str, Any]:
    mode = cfg.mode.name
    m = cfg.mode
    steps_per_epoch = len(data.x_train) // bs
    fit_kw = dict(arrays=arrays, batch_size=bs, eval_batch_size=ebs, seed=cfg.seed, tracker=tracker)
    fits: list[FitResult] = []
    fp32_eval = None
    epoch = 0

    if mode == "qt":
        qmodel = quant.quantize(model, rules, "qt", sample, bwd_qtype=m.bwd_qtype)
        tx = build.optimizer(cfg, m.epochs * steps_per_epoch)
        fits.append(fit(qmodel, tx, epochs=m.epochs, phase="quant", step0=epoch, **fit_kw))
        epoch += m.epochs
        trained = qmodel
    else:
        if m.fp32_checkpoint:
            checkpoint.restore(Path(m.fp32_checkpoint), model)
            log.info("fp32 weights restored from %s", m.fp32_checkpoint)
        else:
            tx = build.optimizer(cfg, m.fp32_epochs * steps_per_epoch)
            fits.append(fit(model, tx, epochs=m.fp32_epochs, phase="fp32", step0=epoch, **fit_kw))
            epoch += m.fp32_epochs
        fp32_eval = evaluate(model, arrays, ebs)
        checkpoint.save(out_dir / "checkpoints" / "fp32", model)
        if mode == "qat":
            trained = quant.quantize(model, rules, "qat", sample)
            tx = build.optimizer(cfg, m.quant_epochs * steps_per_epoch, lr_scale=m.lr_scale)
            fits.append(fit(trained, tx, epochs=m.quant_epochs, phase="quant", step0=epoch, **fit_kw))
            epoch += m.quant_epochs
        elif mode == "srq":
            trained = quant.quantize(model, rules, "calibrate", sample)
            used = calibrate(trained, arrays, m.calib_batches, bs, cfg.seed)
            log.info("calibrated static activation scales on %d batches of %d", used, bs)
        else:
            trained = model

    deployed = quant.quantize(trained, rules, "srq" if mode == "srq" else "ptq", sample)
    q_eval = evaluate(deployed, arrays, ebs)
    checkpoint.save(out_dir / "checkpoints" / "quant", deployed)

    train_time = sum(f.seconds for f in fits)
    train_steps = sum(f.steps for f in fits)
    sizes = [data.features, *cfg.model.hidden, data.n_classes]
    input_rate = float(np.mean(data.x_test))
    layer_rates = [q_eval["spike_rate"][f"layer_{i}"] for i in range(len(cfg.model.hidden))]
    fp32_acc = fp32_eval["accuracy"] if fp32_eval else None
    return {
        "recipe": cfg.quant.name,
        "mode": mode,
        "fp32_accuracy": fp32_acc,
        "quant_accuracy": q_eval["accuracy"],
        "accuracy_drop": None if fp32_acc is None else fp32_acc - q_eval["accuracy"],
        "quant_loss": q_eval["loss"],
        "weight_bytes_fp32": metrics.weight_bytes(model),
        "weight_bytes_quant": metrics.weight_bytes(deployed),
        "bits_per_weight": metrics.bits_per_weight(deployed),
        "spike_rate": q_eval["spike_rate"],
        "fp32_spike_rate": fp32_eval["spike_rate"] if fp32_eval else None,
        "synaptic_ops_per_sample": metrics.synaptic_ops(input_rate, np.asarray(layer_rates), sizes, data.steps),
        "train_time_s": train_time,
        "train_steps": train_steps,
        "steps_per_s": train_steps / train_time if train_time > 0 else None,
        "epochs": epoch,
    }


def results_table(result: dict[str, Any]) -> str:
    """The final console table of a run."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [
        ("recipe / mode", f"{result['recipe']} / {result['mode']}"),
        ("fp32 accuracy", fmt(result["fp32_accuracy"])),
        ("quant accuracy", fmt(result["quant_accuracy"])),
        ("accuracy drop", fmt(result["accuracy_drop"])),
        ("weight bytes fp32 -> quant", f"{fmt(result['weight_bytes_fp32'])} -> {fmt(result['weight_bytes_quant'])}"),
        ("bits per weight", fmt(result["bits_per_weight"])),
        ("spike rate (mean)", fmt(result["spike_rate"]["mean"])),
        ("synaptic ops / sample", fmt(result["synaptic_ops_per_sample"])),
        ("train time (s)", fmt(result["train_time_s"])),
        ("steps / s", fmt(result["steps_per_s"])),
    ]
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 24 + "+"
    body = "\n".join(f"| {k:<{width}} | {v:<22} |" for k, v in rows)
    return f"{line}\n{body}\n{line}"
