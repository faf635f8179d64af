"""The four quantization pipelines, one function per mode, over shared phases.

Each ``conf/mode/*.yaml`` names its function (``_target_``, ``_partial_``)
and holds exactly its knobs; ``snnexp.train.experiment.run`` calls it with a
``Setup``. A new mode is a new function here plus a YAML file. The phases:

* ``fp32_phase``: train the float network (or restore a given checkpoint)
  and evaluate it;
* ``train_phase``: train a (quantized) model, the ``quant`` phase of QAT/QT;
* ``stage_phase``: one stage of QAT's progressive lowering (``mode.stages``):
  fake-quantize the float weights with the stage's recipe, train, and carry
  the trained float weights on to the next stage;
* ``calibrate_phase``: static activation scales for SRQ;
* ``deploy``: convert to integer weights (qwix ``PtqProvider``), evaluate
  that network and save it: ``quant_accuracy`` is the accuracy of what would
  be handed to hardware.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import optax
from flax import nnx

from snnexp import checkpoint, confdir, metrics, quant
from snnexp.errors import ConfigError
from snnexp.export import sidecar
from snnexp.hardware import Profile, integer
from snnexp.hardware.qat import IntegerGrid, grid_channels, grid_qtypes, spike_agreement
from snnexp.rundir import RunDir
from snnexp.train import fp32_cache
from snnexp.train.fp32_cache import Fp32Cache
from snnexp.train.loop import Arrays, Distillation, FitResult, LoopSettings, Trainer, evaluate, fit, stage_phase_name
from snnexp.train.loop import calibrate as calibrate_batches

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a pipeline works on: the built objects of one run, no config."""

    model: nnx.Module  # the float network, trained in place by the fp32 phase
    rules: list[quant.Rule]  # the recipe
    sample: jax.Array  # one input [1, T, F], for qwix's first call
    trainer: Trainer
    # (phase steps, lr scale, schedule=..., warmup_steps=...) -> optimizer (snnexp.build.optimizer)
    optimizer: Callable[..., optax.GradientTransformation]
    run_dir: RunDir
    recipe: str  # the recipe's name
    mode: str  # the mode's name
    hardware: Profile = field(default_factory=Profile)  # the deployed network's arithmetic beyond its weights
    fits: list[FitResult] = field(default_factory=list)  # the training phases so far
    epochs: int = 0  # training epochs so far
    fp32_cache: Fp32Cache | None = None  # where fp32 phases are shared between runs; None: off (fp32_cache=false)
    fp32_cache_record: dict[str, Any] | None = None  # how the fp32 network came through the cache (the metrics')

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        return self.trainer.arrays.x_train.shape[0] // self.trainer.settings.batch_size


@dataclass(frozen=True)
class Finetune:
    """How a quantized training phase trains: its learning rate, schedule and soft targets."""

    lr_scale: float = 1.0  # the phase's learning rate = optim.lr * lr_scale
    schedule: str | Mapping[str, Any] | None = None  # None: optim.schedule; else see snnexp.build.optimizer
    warmup_steps: int | None = None  # None: the schedule's own warm-up; else see snnexp.build.optimizer
    distill: Distillation | None = None  # None: cross-entropy alone


@dataclass(frozen=True)
class Stage:
    """One stage of QAT's progressive lowering (``mode.stages``)."""

    recipe: str  # an option of conf/quant
    epochs: int


STAGE_KEYS = ("quant", "epochs")


def parse_stages(stages: Sequence[Mapping[str, Any]] | None, where: str = "mode.stages") -> list[Stage]:
    """Checks ``mode.stages`` (a list of ``{quant: <recipe>, epochs: <n>}``, or null) before any compute.

    Args:
        stages: the knob's value, as plain Python.
        where: the key named in errors.

    Returns:
        The stages, in order.

    Raises:
        ConfigError: one line naming the knob, its value, the bad stage and
            the valid choices (the recipes of ``conf/quant``).
    """
    if stages is None:
        return []
    shape = "{quant: <a recipe of conf/quant>, epochs: <an integer >= 0>}"
    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"{where}={stages!r} must be a list of stages {shape}, or null")
    recipes = confdir.options("quant")
    out = []
    for i, stage in enumerate(stages):
        at = f"{where}={stages!r}: {where}[{i}]"
        if not isinstance(stage, Mapping):
            raise ConfigError(f"{at}={stage!r} must be a stage {shape}")
        unknown = sorted(map(str, set(stage) - set(STAGE_KEYS)))
        if unknown:
            raise ConfigError(f"{at}.{unknown[0]} is not a key of a stage; valid choices: {list(STAGE_KEYS)}")
        missing = [k for k in STAGE_KEYS if k not in stage]
        if missing:
            raise ConfigError(f"{at} has no {missing[0]}: a stage must be {shape}")
        name, epochs = stage["quant"], stage["epochs"]
        if not isinstance(name, str) or name not in recipes:
            raise ConfigError(f"{at}.quant={name!r} is not a recipe of conf/quant; valid choices: {recipes}")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ConfigError(f"{at}.epochs={epochs!r} must be an integer >= 0")
        out.append(Stage(name, epochs))
    return out


def stage_recipe(stage: Stage) -> tuple[str, list[quant.Rule]]:
    """The recipe of a stage: its name and rules, read from ``conf/quant`` as ``quant=<recipe>`` composes it."""
    node = confdir.load_option("quant", stage.recipe)
    return str(node.get("name", stage.recipe)), quant.parse_recipe(node.get("rules"))


def qat(setup: Setup, *, fp32_epochs: int, quant_epochs: int, lr_scale: float,
        fp32_checkpoint: str | None = None, schedule: str | dict | None = None, warmup_steps: int | None = None,
        distill_weight: float = 0.0, distill_temperature: float = 2.0,
        stages: list[dict] | None = None) -> dict[str, Any]:
    """Quantization-aware training: fp32, then fake-quant fine-tuning with straight-through gradients.

    The fine-tuning (and each stage) trains with ``optim.lr * lr_scale`` on
    ``schedule`` (None: the optimizer's) with ``warmup_steps`` (None: the
    schedule's own), against the labels blended with the fp32 network's
    softened readout when ``distill_weight > 0`` (``steps.distillation_loss``).
    ``stages`` (``[{quant: <recipe>, epochs: <n>}, ...]``) come first: each
    fake-quantizes the float weights the previous one trained with its own
    recipe and trains them (``stage_phase``); the final ``quant`` phase then
    fine-tunes with the run's recipe for ``quant_epochs``, and that network
    is deployed.
    """
    plan = [(stage, *stage_recipe(stage)) for stage in parse_stages(stages)]
    for _, _, rules in plan:  # a rule that matches no layer fails before any training
        check_recipe(setup, rules)
    fp32 = fp32_phase(setup, fp32_epochs, fp32_checkpoint)
    distill = (Distillation(nnx.clone(setup.model), float(distill_weight), float(distill_temperature))
               if distill_weight > 0 else None)
    finetune = Finetune(lr_scale, schedule, warmup_steps, distill)
    current = setup.model
    if plan:  # the stages train a copy: setup.model stays the fp32 network
        current = nnx.clone(setup.model)
        for k, (stage, name, rules) in enumerate(plan, start=1):
            stage_phase(setup, current, k, stage.epochs, name, rules, finetune)
    trained = training_model("qat", current, setup.rules, setup.sample, hardware=setup.hardware,
                             x_train=setup.trainer.arrays.x_train)
    train_phase(setup, trained, quant_epochs, finetune)
    result = deploy(setup, trained, "ptq", fp32)
    if plan:
        result["stages"] = {stage_phase_name(k): {"recipe": name, "epochs": stage.epochs}
                            for k, (stage, name, _) in enumerate(plan, start=1)}
    return result


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
    """Trains the float network (or restores it), saves it; returns its test evaluation.

    In order: a resumed run restores its own ``checkpoints/fp32``; a given
    ``fp32_checkpoint`` is restored (the cache is not asked); with the fp32
    cache on, the network of the same key is reused from the cache, or
    trained here and stored there (``snnexp.train.fp32_cache``); else it is
    trained. Every way ends with the run's own ``checkpoints/fp32``.
    """
    rd, model = setup.run_dir, setup.model
    own = rd.checkpoints / "fp32"
    eval_bs = setup.trainer.settings.eval_batch_size
    evaluation = None
    if own.exists():
        checkpoint.restore(own, model)
        log.info("fp32 network restored from %s (the run's own fp32 phase)", own)
        setup.fits.append(FitResult(**rd.phases().get("fp32", {"steps": 0, "seconds": 0.0})))
        setup.fp32_cache_record = fp32_cache.recorded(rd.checkpoints)
    elif fp32_checkpoint:
        checkpoint.restore(Path(fp32_checkpoint), model)
        log.info("fp32 weights restored from %s", fp32_checkpoint)
    elif setup.fp32_cache is not None:
        def train() -> tuple[FitResult, dict[str, Any]]:
            result = _train_fp32(setup, epochs)
            return result, evaluate(model, setup.trainer.arrays, eval_bs)

        evaluation = fp32_cache.fp32_network(setup, setup.fp32_cache, epochs, train)
    else:
        _train_fp32(setup, epochs)
    if not fp32_checkpoint:
        setup.epochs += epochs
    if evaluation is None:
        evaluation = evaluate(model, setup.trainer.arrays, eval_bs)
    if not own.exists():
        checkpoint.save(own, model)
    setup.trainer.stop.check("after the fp32 phase")
    return evaluation


def _train_fp32(setup: Setup, epochs: int) -> FitResult:
    """Trains ``setup.model`` as the fp32 phase (resuming a saved one) and records the phase."""
    tx = setup.optimizer(epochs * setup.steps_per_epoch, 1.0)
    result = fit(setup.model, tx, setup.trainer, phase="fp32", epochs=epochs)
    _record(setup, "fp32", result)
    return result


def train_phase(setup: Setup, model: nnx.Module, epochs: int, finetune: Finetune | None = None, *,
                phase: str = "quant") -> None:
    """Trains ``model`` (quantized) in place for ``epochs``: the run's ``quant`` phase, or a QAT stage."""
    f = finetune or Finetune()
    tx = setup.optimizer(epochs * setup.steps_per_epoch, f.lr_scale, schedule=f.schedule,
                         warmup_steps=f.warmup_steps)
    _record(setup, phase, fit(model, tx, setup.trainer, phase=phase, epochs=epochs, epoch0=setup.epochs,
                              distill=f.distill))
    setup.epochs += epochs


def stage_phase(setup: Setup, current: nnx.Module, k: int, epochs: int, recipe: str, rules: list[quant.Rule],
                finetune: Finetune | None = None) -> nnx.Module | None:
    """QAT's ``k``-th stage (phase ``stage<k>``): ``current``'s float weights trained under ``rules``.

    The fake-quant copy of ``current`` (qwix keeps each weight as the same
    float ``nnx.Param`` and quantizes it at every call) trains for
    ``epochs``; its float parameters are then copied back into ``current``
    (``copy_float_weights``), from which the next stage starts, and saved in
    ``checkpoints/stage<k>``. A rerun restores that checkpoint instead of
    training the stage again.

    Args:
        setup: the run.
        current: the float network, updated in place.
        k: the stage's number, from 1.
        epochs: its epochs.
        recipe: its recipe's name (for the record).
        rules: its recipe.
        finetune: how it trains.

    Returns:
        The trained fake-quant network, or None when the stage was restored.
    """
    phase = stage_phase_name(k)
    path = setup.run_dir.checkpoints / phase
    if path.exists():
        checkpoint.restore(path, current)
        setup.fits.append(FitResult(**setup.run_dir.phases().get(phase, {"steps": 0, "seconds": 0.0})))
        setup.epochs += epochs
        log.info("[%s] restored from %s (stage %d, recipe %s, already trained)", phase, path, k, recipe)
        return None
    log.info("[%s] stage %d: fake-quant %s for %d epoch(s)", phase, k, recipe, epochs)
    model = training_model("qat", current, rules, setup.sample, hardware=setup.hardware,
                           x_train=setup.trainer.arrays.x_train)
    train_phase(setup, model, epochs, finetune, phase=phase)
    copy_float_weights(model, current)
    checkpoint.save(path, current)
    setup.trainer.stop.check(f"after {phase}")
    return model


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
        "train_time_s": train_time,  # what this run trained: a reused fp32 phase counts 0 (fp32_cache has its time)
        "train_steps": steps,
        "steps_per_s": steps / train_time if train_time > 0 else None,
        "epochs": setup.epochs,
        "fp32_reused": bool(setup.fp32_cache_record and setup.fp32_cache_record["hit"]),
        "fp32_cache": setup.fp32_cache_record,
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
    binary, scale = integer.input_coding(x_train, hardware)
    qmodel.integer_grid = IntegerGrid(hardware, grid_qtypes(model, rules), binary, scale,
                                      per_channel=grid_channels(model, rules))
    return qmodel


def copy_float_weights(trained: nnx.Module, into: nnx.Module) -> None:
    """Copies the float parameters of a fake-quant (QAT/QT) model into the float network it was made from.

    qwix's ``QtProvider`` keeps every weight as the model's own float
    ``nnx.Param``, at the same path as in the float network, and quantizes
    it at each call; so the ``nnx.Param`` state of the two has the same
    paths and shapes (checked), and the trained latent weights are those
    parameters (docs/qwix_on_snns.md §6).

    Raises:
        ValueError: the two hold different parameters (not a copy of ``into``).
    """
    src, dst = nnx.state(trained, nnx.Param), nnx.state(into, nnx.Param)

    def shapes(state: Any) -> list[tuple[str, tuple[int, ...]]]:
        return [(jax.tree_util.keystr(p), tuple(np.shape(v))) for p, v in jax.tree_util.tree_leaves_with_path(state)]

    if shapes(src) != shapes(dst):
        raise ValueError(f"the trained model's parameters {shapes(src)} are not the float network's {shapes(dst)}")
    nnx.update(into, src)


def check_recipe(setup: Setup, rules: list[quant.Rule]) -> None:
    """Refuses, before any training, a recipe that does not apply to the run's network.

    As ``snnexp.build.network`` checks the run's own recipe: a dry
    quantization (a rule that matches no layer, a tile that does not divide
    a layer) and, for an integer ``hardware`` profile, its integer form.
    """
    if setup.hardware.integer:
        dry = quant.quantize(setup.model, rules, "ptq", setup.sample)
        integer.IntegerNetwork.from_deployed(dry, rules, setup.hardware, np.asarray(setup.sample))
    else:  # traced only: no eager op compiles
        nnx.eval_shape(lambda m: quant.quantize(m, rules, "ptq", setup.sample), setup.model)


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
