"""The four quantization pipelines, one function per mode, over shared phases.

Each ``conf/mode/*.yaml`` names its function (``_target_``, ``_partial_``)
and holds exactly its knobs; ``snnexp.train.experiment.run`` calls it with a
``Setup``. A new mode is a new function here plus a YAML file. The phases:

* ``fp32_phase``: train the float network (or restore a given checkpoint)
  and evaluate it;
* ``train_phase``: train a (quantized) model, the ``quant`` phase of QAT/QT;
* ``calibrate_phase``: static activation scales for SRQ;
* ``deploy``: convert to integer weights (qwix ``PtqProvider``), evaluate
  that network and save it: ``quant_accuracy`` is the accuracy of what would
  be handed to hardware.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import optax
from flax import nnx

from snnexp import checkpoint, metrics, quant
from snnexp.export import sidecar
from snnexp.hardware import Profile, integer
from snnexp.hardware.qat import IntegerGrid, spike_agreement
from snnexp.rundir import RunDir
from snnexp.train.loop import Arrays, FitResult, LoopSettings, Trainer, evaluate, fit
from snnexp.train.loop import calibrate as calibrate_batches

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a pipeline works on: the built objects of one run, no config."""

    model: nnx.Module  # the float network, trained in place by the fp32 phase
    rules: list[quant.Rule]  # the recipe
    sample: jax.Array  # one input [1, T, F], for qwix's first call
    trainer: Trainer
    optimizer: Callable[[int, float], optax.GradientTransformation]  # (phase steps, lr scale) -> optimizer
    run_dir: RunDir
    recipe: str  # the recipe's name
    mode: str  # the mode's name
    hardware: Profile = field(default_factory=Profile)  # the deployed network's arithmetic beyond its weights
    fits: list[FitResult] = field(default_factory=list)  # the training phases so far
    epochs: int = 0  # training epochs so far

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        return self.trainer.arrays.x_train.shape[0] // self.trainer.settings.batch_size


def qat(setup: Setup, *, fp32_epochs: int, quant_epochs: int, lr_scale: float,
        fp32_checkpoint: str | None = None) -> dict[str, Any]:
    """Quantization-aware training: fp32, then fake-quant fine-tuning with straight-through gradients."""
    fp32 = fp32_phase(setup, fp32_epochs, fp32_checkpoint)
    trained = training_model("qat", setup.model, setup.rules, setup.sample, hardware=setup.hardware,
                             x_train=setup.trainer.arrays.x_train)
    train_phase(setup, trained, quant_epochs, lr_scale=lr_scale)
    return deploy(setup, trained, "ptq", fp32)


def qt(setup: Setup, *, epochs: int, bwd_qtype: str | None) -> dict[str, Any]:
    """Quantized training from the start: quantized forward and backward pass (``bwd_qtype``)."""
    trained = training_model("qt", setup.model, setup.rules, setup.sample, bwd_qtype=bwd_qtype,
                             hardware=setup.hardware, x_train=setup.trainer.arrays.x_train)
    train_phase(setup, trained, epochs)
    return deploy(setup, trained, "ptq", None)


def ptq(setup: Setup, *, fp32_epochs: int, fp32_checkpoint: str | None = None) -> dict[str, Any]:
    """Post-training quantization: fp32, then integer weights and dynamic activation scales."""
    fp32 = fp32_phase(setup, fp32_epochs, fp32_checkpoint)
    return deploy(setup, setup.model, "ptq", fp32)


def srq(setup: Setup, *, fp32_epochs: int, calib_batches: int, fp32_checkpoint: str | None = None) -> dict[str, Any]:
    """Static-range quantization: fp32, static activation scales from ``calib_batches``, integer weights."""
    if setup.rules and not any(r.act_qtype for r in setup.rules):
        log.warning("srq with a weights-only recipe: there are no activation scales to calibrate")
    fp32 = fp32_phase(setup, fp32_epochs, fp32_checkpoint)
    return deploy(setup, calibrate_phase(setup, calib_batches), "srq", fp32)


# ----------------------------------------------------------------- the phases


def fp32_phase(setup: Setup, epochs: int, fp32_checkpoint: str | None) -> dict[str, Any]:
    """Trains the float network (or restores ``fp32_checkpoint``), saves it; returns its test evaluation.

    A resumed run restores its own ``checkpoints/fp32`` instead of training.
    """
    rd, model = setup.run_dir, setup.model
    own = rd.checkpoints / "fp32"
    if own.exists():
        checkpoint.restore(own, model)
        log.info("fp32 network restored from %s (the run's own fp32 phase)", own)
        setup.fits.append(FitResult(**rd.phases().get("fp32", {"steps": 0, "seconds": 0.0})))
    elif fp32_checkpoint:
        checkpoint.restore(Path(fp32_checkpoint), model)
        log.info("fp32 weights restored from %s", fp32_checkpoint)
    else:
        tx = setup.optimizer(epochs * setup.steps_per_epoch, 1.0)
        _record(setup, "fp32", fit(model, tx, setup.trainer, phase="fp32", epochs=epochs))
    if not fp32_checkpoint:
        setup.epochs += epochs
    evaluation = evaluate(model, setup.trainer.arrays, setup.trainer.settings.eval_batch_size)
    if not own.exists():
        checkpoint.save(own, model)
    setup.trainer.stop.check("after the fp32 phase")
    return evaluation


def train_phase(setup: Setup, model: nnx.Module, epochs: int, lr_scale: float = 1.0) -> None:
    """Trains ``model`` (quantized) in place for ``epochs``: the run's ``quant`` phase."""
    tx = setup.optimizer(epochs * setup.steps_per_epoch, lr_scale)
    _record(setup, "quant", fit(model, tx, setup.trainer, phase="quant", epochs=epochs, epoch0=setup.epochs))
    setup.epochs += epochs


def calibrate_phase(setup: Setup, batches: int) -> nnx.Module:
    """SRQ's calibrated copy of the float network; restored from ``checkpoints/calibrated`` on a rerun."""
    path = setup.run_dir.checkpoints / "calibrated"
    if path.exists():
        calibrated = quant.quantize(setup.model, setup.rules, "calibrate", setup.sample)
        checkpoint.restore(path, calibrated)
        calibrated.set_attributes(disable_quant_stats_update=True, raise_if_not_found=False)
        return calibrated
    calibrated = calibrated_model(setup.model, setup.rules, setup.sample, setup.trainer.arrays, batches,
                                  setup.trainer.settings)
    checkpoint.save(path, calibrated)
    return calibrated


def deploy(setup: Setup, trained: nnx.Module, kind: quant.Mode, fp32: dict[str, Any] | None) -> dict[str, Any]:
    """Converts ``trained`` to integer weights, evaluates and saves it; returns the run's metrics.

    With an integer ``hardware`` profile the deployed network is then mapped
    onto the profile's integers (``snnexp.hardware.integer``), evaluated in
    integer arithmetic and written as the run's ``integer/`` sidecar:
    ``quant_accuracy`` is that network's, ``float_state_accuracy`` the
    integer-weight network's with float neuron state.

    Args:
        setup: the run.
        trained: the float, fake-quantized or calibrated network.
        kind: ``"ptq"`` (dynamic activation scales) or ``"srq"`` (static).
        fp32: the float network's test evaluation, or None (QT has no fp32 phase).
    """
    deployed = integer_model(trained, setup.rules, setup.sample, kind)
    arrays, eval_bs = setup.trainer.arrays, setup.trainer.settings.eval_batch_size
    q_eval = evaluate(deployed, arrays, eval_bs)
    checkpoint.save(setup.run_dir.checkpoints / "quant", deployed)
    hw: dict[str, Any] = {"hardware": setup.hardware.name}
    if setup.hardware.integer:
        net = integer.IntegerNetwork.from_deployed(deployed, setup.rules, setup.hardware, arrays.x_train)
        i_eval = integer.evaluate(net, arrays.x_test, np.asarray(arrays.y_test), eval_bs)  # x stays on the device
        sidecar.write(net, setup.run_dir.path / "integer", dt=1e-3,
                      source={"recipe": setup.recipe, "mode": setup.mode})
        hw.update(integer.hardware_metrics(net, i_eval), float_state_accuracy=q_eval["accuracy"])
        if getattr(trained, "integer_grid", None) is not None:
            hw["qat_spike_agreement"] = spike_agreement(trained, net, np.asarray(arrays.x_test), eval_bs)
        log.info("integer network (hardware=%s): test acc %.2f%% (float state %.2f%%)", setup.hardware.name,
                 100 * i_eval["accuracy"], 100 * q_eval["accuracy"])
        q_eval = {**q_eval, "accuracy": i_eval["accuracy"], "loss": i_eval["loss"], "spike_rate": i_eval["spike_rate"]}

    train_time = sum(f.seconds for f in setup.fits)
    steps = sum(f.steps for f in setup.fits)
    rates = q_eval["spike_rate"]
    layer_rates = np.asarray([rates[f"layer_{i}"] for i in range(len(rates) - 1)])
    fp32_acc = fp32["accuracy"] if fp32 else None
    return {
        "recipe": setup.recipe,
        "mode": setup.mode,
        "fp32_accuracy": fp32_acc,
        "quant_accuracy": q_eval["accuracy"],
        "accuracy_drop": None if fp32_acc is None else fp32_acc - q_eval["accuracy"],
        "quant_loss": q_eval["loss"],
        "weight_bytes_fp32": metrics.weight_bytes(setup.model),
        "weight_bytes_quant": metrics.weight_bytes(deployed),
        "bits_per_weight": metrics.bits_per_weight(deployed),
        "spike_rate": rates,
        "fp32_spike_rate": fp32["spike_rate"] if fp32 else None,
        **metrics.deployed_metrics(deployed, setup.rules, arrays.x_test, layer_rates,
                                   setup.model.synapses()),  # packed bytes, ACs/MACs, sparsity
        **hw,
        "train_time_s": train_time,
        "train_steps": steps,
        "steps_per_s": steps / train_time if train_time > 0 else None,
        "epochs": setup.epochs,
    }


# ------------------------------------------ the models of the phases (the bench uses them too)


def training_model(mode: Literal["fp32", "qat", "qt"], model: nnx.Module, rules: list[quant.Rule],
                   sample: jax.Array, *, bwd_qtype: str | None = None, hardware: Profile | None = None,
                   x_train: Any = None) -> nnx.Module:
    """The model a training phase trains.

    ``fp32``: the float network itself; ``qat``: its fake-quantized copy
    (straight-through gradients); ``qt``: its copy with a quantized backward
    pass too (gradients in ``bwd_qtype``). With an integer ``hardware``
    profile, the quantized copy also computes its neuron state, leak and
    threshold on the profile's grid (``IntegerStateModel``; ``x_train`` gives
    the input coding).
    """
    if mode == "fp32":
        return model
    qmodel = quant.quantize(model, rules, mode, sample, bwd_qtype=bwd_qtype if mode == "qt" else None)
    if hardware is None or not hardware.integer:
        return qmodel
    paths = [f"fc/{i}" for i in range(len(model.neurons))] + ["readout"]
    binary, scale = integer.input_coding(x_train, hardware)
    qmodel.integer_grid = IntegerGrid(hardware, tuple(metrics.qtype_of(p, rules) for p in paths), binary, scale)
    return qmodel


def calibrated_model(model: nnx.Module, rules: list[quant.Rule], sample: jax.Array, arrays: Arrays, batches: int,
                     settings: LoopSettings) -> nnx.Module:
    """A copy of ``model`` with static activation scales from ``batches`` training batches, frozen."""
    calibrated = quant.quantize(model, rules, "calibrate", sample)
    used = calibrate_batches(calibrated, arrays, batches, settings.batch_size, settings.seed)
    log.info("calibrated static activation scales on %d batches of %d", used, settings.batch_size)
    return calibrated


def integer_model(trained: nnx.Module, rules: list[quant.Rule], sample: jax.Array, kind: quant.Mode) -> nnx.Module:
    """The deployed network: integer weights, dynamic (``ptq``) or static (``srq``) activation scales.

    Its neuron state is float: a training model's ``integer_grid`` is not carried over.
    """
    if getattr(trained, "integer_grid", None) is not None:
        trained = nnx.clone(trained)
        trained.integer_grid = None
    return quant.quantize(trained, rules, kind, sample)


def _record(setup: Setup, phase: str, result: FitResult) -> None:
    setup.fits.append(result)
    setup.run_dir.finish_phase(phase, result.steps, result.seconds)
