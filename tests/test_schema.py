"""``snnexp.schema.validate``: every key of every group option refuses a bad value, in one line, up front.

Each group option is composed as ``python -m snnexp group=option`` composes it
(``conftest.make_cfg``); each bad value is then applied as a command-line
override is (Hydra's override parser, then ``OmegaConf.update``, as
``compose`` does; ``test_overrides_apply_as_compose_applies_them`` checks
that the two agree). The bad values below are written here, not taken from
the schema, and every key of every option must have some: a new key in a
YAML file fails ``test_every_key_of_every_option_has_bad_values`` until it
gets them.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from snnexp import quant, schema
from snnexp.errors import ConfigError
from snnexp.train import run
from tests.conftest import CONF_DIR, make_cfg

# group -> where its option lives in the composed config
GROUPS = {
    "data": "data", "model": "model", "neuron": "neuron", "surrogate": "surrogate", "quant": "quant",
    "mode": "mode", "optim": "optim", "optim/schedule": "optim.schedule", "logger": "logger",
    "hardware": "hardware",
}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]
GLOBAL_OPTIONS = [(g, p.stem) for g in ("debug", "experiment", "sweep", "hparams_search")
                  for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]

TYPE = ["abc", "[1]"]  # neither a number nor ... (most keys take one of these as a wrong type)
NOT_BOOL = ["abc", "2", "[1]"]
NOT_STR = ["[1]", "3"]
NAME = ["''", "[1]"]
TARGET = ["no.such.target", "5"]
POSITIVE_INT = ["0", "-3", "1.5", "abc", "true"]
COUNT = ["-1", "1.5", "abc", "true"]  # an integer >= 0
DECAY = ["1.5", "-0.1", "abc", "true"]
POSITIVE = ["0", "-1", "abc", "true"]
NONNEG = ["-1", "abc", "true"]
CHOICE = ["nope", "3"]

# Bad command-line values for each key, by its path; "*" stands for a rule's index.
BAD: dict[str, list[str]] = {
    # hardware (the joint ranges, e.g. threshold_bits below state_bits, are snnexp.hardware.Profile's)
    "hardware.name": NAME,
    "hardware.state_bits": ["1", "abc", "1.5"],
    "hardware.decay": CHOICE,
    "hardware.decay_bits": POSITIVE_INT,
    "hardware.threshold_bits": POSITIVE_INT,
    "hardware.accumulator_bits": ["1", "abc"],
    "hardware.overflow": CHOICE,
    "hardware.current_overflow": CHOICE,
    "hardware.reset": CHOICE,
    "hardware.shift": COUNT,
    "hardware.weight_bits": ["1", "abc"],
    "hardware.input_bits": ["1", "abc"],
    "hardware.follows": NOT_STR,
    # the top level and trainer
    "seed": ["-1", "0.5", "abc"],
    "resume": NOT_BOOL,
    "objective": NAME,
    "compile_cache": NOT_STR,
    "fp32_cache": NOT_BOOL,
    "fp32_cache_dir": NAME,
    "trainer.epochs": COUNT,
    "trainer.batch_size": POSITIVE_INT,
    "trainer.eval_batch_size": POSITIVE_INT,
    "trainer.steps_per_call": COUNT,
    "trainer.checkpoint_every": POSITIVE_INT,
    "trainer.augment.shift": ["-1", "1.5", "abc"],
    "trainer.augment.noise": ["-0.1", "abc"],
    # data
    "data._target_": TARGET,
    "data.name": NAME,
    "data.steps": POSITIVE_INT,
    "data.encoding": CHOICE,
    "data.test_fraction": ["0", "1", "1.5", "abc"],
    "data.seed": ["-1", "0.5", "abc"],
    "data.threshold": POSITIVE,
    "data.levels": ["1", "2.5", "abc"],
    "data.cache_dir": NOT_STR,
    "data.root": NAME,
    "data.pool": ["3", "0", "abc"],
    "data.binary": NOT_BOOL,
    "data.max_samples": ["0", "1.5", "abc"],
    "data.dt": POSITIVE,
    "data.channels": ["3", "0", "abc"],
    "data.n_train": POSITIVE_INT,
    "data.n_test": POSITIVE_INT,
    "data.features": POSITIVE_INT,
    "data.n_classes": POSITIVE_INT,
    "data.eval_split": ["train", "3"],
    "data.repeat": POSITIVE_INT,
    "data.train_seed": ["-1", "0.5", "abc"],
    "data.validation_seed": ["-1", "0.5", "abc"],
    "data.test_seed": ["-1", "0.5", "abc"],
    # model
    "model._target_": TARGET,
    "model._partial_": NOT_BOOL,
    "model.hidden": ["[0]", "128", "[]", "[a]", "[1.5]", "[64,-1]"],
    "model.readout_beta": DECAY,
    "model.readout": CHOICE,
    "model.rec_gain": NONNEG,
    "model.input_delays": POSITIVE_INT,
    "model.delay_stride": POSITIVE_INT,
    "model.kernel_size": ["0", "[3,0]", "abc", "1.5"],
    "model.pool": ["0", "[2,0]", "abc"],
    "model.pooling": ["min", "3"],
    "model.image": ["[2,17]", "[2,17,0]", "abc", "5"],
    "model.impl": ["cudnn", "3"],
    # neuron and surrogate
    "neuron._target_": TARGET,
    "neuron._partial_": NOT_BOOL,
    "neuron.name": NAME,
    "neuron.alpha": DECAY,
    "neuron.beta": DECAY,
    "neuron.gamma": DECAY,
    "neuron.threshold": POSITIVE,
    "neuron.activation": ["abc", "3"],
    "surrogate._target_": TARGET,
    "surrogate.k": POSITIVE,
    "surrogate.width": POSITIVE,
    "surrogate.height": POSITIVE,
    # quant
    "quant.name": NAME,
    "quant.weight_bits": ["9", "1", "abc"],
    "quant.rules": ["abc", "[1]"],
    "quant.rules.*.module_path": ["'('", "5"],
    "quant.rules.*.weight_qtype": ["fp8", "int1", "5"],
    "quant.rules.*.act_qtype": ["uint8", "5"],
    "quant.rules.*.weight_calibration_method": ["absmean", "spikes", "5"],
    "quant.rules.*.act_calibration_method": ["absmean", "5"],
    "quant.rules.*.tile_size": ["0", "-1", "abc"],
    "quant.rules.*.ternary_scale": ["row", "5"],
    # mode
    "mode._target_": ["snnexp.train.pipelines.qatt", "5"],
    "mode._partial_": NOT_BOOL,
    "mode.name": NAME,
    "mode.fp32_epochs": COUNT,
    "mode.quant_epochs": COUNT,
    "mode.epochs": COUNT,
    "mode.calib_batches": COUNT,
    "mode.fp32_checkpoint": ["/no/such/ckpt", "[1]"],
    "mode.lr_scale": POSITIVE,
    "mode.bwd_qtype": ["int1", "5"],
    "mode.schedule": ["cosin", "3"],
    "mode.warmup_steps": COUNT,
    "mode.distill_weight": DECAY,
    "mode.distill_temperature": POSITIVE,
    "mode.stages": ["abc", "[1]", "[{quant:w9a8,epochs:1}]", "[{quant:w8a8}]", "[{quant:w8a8,epochs:-1}]",
                    "[{quant:w8a8,epochs:1,lr:2}]", "[{quant:w8a8,epochs:1},{quant:3,epochs:1}]"],
    # optim
    "optim.name": NAME,
    "optim.lr": ["abc", "0", "-1", "true"],
    "optim.grad_clip_norm": POSITIVE,
    "optim.optimizer": ["abc", "3"],
    "optim.optimizer._target_": ["optax.nosuch", "5"],
    "optim.optimizer._partial_": NOT_BOOL,
    "optim.optimizer.weight_decay": NONNEG,
    "optim.schedule": ["abc", "3"],
    "optim.schedule._target_": ["optax.nosuch", "5"],
    "optim.schedule._partial_": NOT_BOOL,
    "optim.schedule.value": POSITIVE,
    "optim.schedule.init_value": NONNEG,
    "optim.schedule.alpha": ["1.5", "-0.1", "abc"],
    "optim.schedule.peak_value": POSITIVE,
    "optim.schedule.warmup_steps": COUNT,
    "optim.schedule.end_value": NONNEG,
    # logger
    "logger.backend": ["tensorboard", "3"],
    "logger.project": NAME,
    "logger.entity": NOT_STR,
    "logger.group": NOT_STR,
    "logger.name": NOT_STR,
    "logger.tags": ["abc", "[1]"],
    "logger.mode": ["on", "3"],
    "logger.log_checkpoint": NOT_BOOL,
}

PARSER = OverridesParser.create()


@functools.cache
def _composed(*overrides: str) -> DictConfig:
    return make_cfg(*overrides)


def _option_cfg(group: str, option: str) -> DictConfig:
    return copy.deepcopy(_composed(f"{group}={option}"))


def _apply(cfg: DictConfig, override: str) -> DictConfig:
    """``cfg`` with one command-line override applied, as Hydra's ``compose`` applies it."""
    o = PARSER.parse_override(override)
    out = copy.deepcopy(cfg)
    OmegaConf.update(out, o.key_or_group, o.value(), merge=True, force_add=o.is_add())
    return out


def _leaves(node: Any, prefix: str) -> list[str]:
    """The key paths of ``node``: its keys, a rule list's items' keys, and nested ``_target_`` nodes' keys."""
    out = []
    for key, value in node.items():
        path = f"{prefix}.{key}"
        out.append(path)
        if isinstance(value, dict) and "_target_" in value and key != "activation":
            out += _leaves(value, path)
        if key == "rules":
            for i, rule in enumerate(value):
                out += _leaves(rule, f"{path}.{i}")
    return out


def _option_keys(group: str, option: str) -> list[str]:
    """Every key path of ``group=option`` (the schedule of an optim option is its own group)."""
    where = GROUPS[group]
    node = OmegaConf.to_container(OmegaConf.select(_option_cfg(group, option), where), resolve=True)
    return [k for k in _leaves(node, where) if not (group == "optim" and k.startswith("optim.schedule."))]


def _pattern(path: str) -> str:
    return re.sub(r"\.rules\.\d+\.", ".rules.*.", path)


def _cases() -> list[tuple[str, str, str, str]]:
    top = ("seed", "resume", "objective", "compile_cache", "fp32_cache", "fp32_cache_dir")
    cases = [("train", "", key, value) for key in top for value in BAD[key]]
    cases += [("train", "", f"trainer.{k}", v) for k in ("epochs", "batch_size", "eval_batch_size",
                                                          "steps_per_call", "checkpoint_every",
                                                          "augment.shift", "augment.noise")
              for v in BAD[f"trainer.{k}"]]
    for group, option in OPTIONS:
        for key in _option_keys(group, option):
            cases += [(group, option, key, value) for value in BAD.get(_pattern(key), [])]
    return cases


def _message_names(message: str, key: str, value: Any) -> None:
    """One line that names the key (``rules.0`` as ``rules[0]``), the value and what is allowed."""
    assert "\n" not in message, message
    shown = re.sub(r"\.rules\.(\d+)", r".rules[\1]", key)
    assert shown in message, f"{shown!r} not in {message!r}"
    assert repr(value) in message, f"{value!r} not in {message!r}"
    assert re.search(r"must be|valid choices|does not exist|is not a regex|is not a function snnexp|"
                     r"must name|is for activations only|must be null", message), message


def test_every_option_of_every_group_passes():
    for group, option in OPTIONS + GLOBAL_OPTIONS:
        schema.validate(make_cfg(f"{group}={option}"))
    schema.validate(make_cfg("debug=fast", "mode=ptq"))  # debug=fast sets other modes' knobs: ignored


def test_every_key_of_every_option_has_bad_values():
    missing = sorted({_pattern(k) for g, o in OPTIONS for k in _option_keys(g, o)} - set(BAD))
    assert not missing, f"add bad values for {missing} to BAD"


@pytest.mark.parametrize("group,option,key,value", _cases(),
                         ids=lambda v: str(v) if v else "-")
def test_a_bad_value_of_any_key_is_refused_in_one_line_naming_it(group, option, key, value):
    base = _composed() if group == "train" else _option_cfg(group, option)
    cfg = _apply(base, f"{key}={value}")
    parsed = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        parsed = parsed[int(part)] if isinstance(parsed, list) else parsed[part]
    with pytest.raises((ConfigError, quant.RecipeError)) as e:
        schema.validate(cfg)
    _message_names(str(e.value), key, parsed)


NODES = [(g, o, GROUPS[g]) for g, o in OPTIONS]
NODES += [("optim", o, "optim.optimizer") for g, o in OPTIONS if g == "optim"]
NODES += [("quant", o, "quant.rules.0") for g, o in OPTIONS if g == "quant" and o != "fp32"]


@pytest.mark.parametrize("group,option,node", NODES, ids=str)
def test_an_unknown_key_is_refused_by_hydra_from_the_cli_and_by_the_schema_from_a_file(group, option, node):
    key = f"{node}.no_such_key"
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg(f"{group}={option}", f"{key}=1")
    assert key in str(e.value) and "no_such_key" in str(e.value.__cause__)
    cfg = _apply(_option_cfg(group, option), f"+{key}=1")  # as a preset or a '+' override adds it
    with pytest.raises((ConfigError, quant.RecipeError)) as e:
        schema.validate(cfg)
    message = str(e.value)
    assert "\n" not in message
    assert "no_such_key" in message and re.sub(r"\.rules\.(\d+)", r".rules[\1]", node) in message
    assert "valid keys" in message


def test_an_unknown_top_level_key_is_refused():
    with pytest.raises(ConfigError, match=r"^no_such_key is not a key of the run config; valid keys: \["):
        schema.validate(_apply(_composed(), "+no_such_key=1"))


def test_the_three_reported_cases_fail_before_any_data_loads_with_one_line(tmp_path):
    for i, (override, message) in enumerate([
        ("optim.lr=abc", "optim.lr='abc' must be a number > 0"),
        ("model.hidden=[0]", "model.hidden=[0] must be a non-empty list of integers >= 1"),
        ("model.hidden=128", "model.hidden=128 must be a non-empty list of integers >= 1"),
    ]):
        out = tmp_path / str(i)
        with pytest.raises(ConfigError) as e:
            run(make_cfg(override, "logger=none"), out)
        assert str(e.value).startswith(message), str(e.value)
        assert json.loads((out / "status.json").read_text())["status"] == "failed"
        assert not (out / "network.json").exists() and not (out / "history.jsonl").exists()


def test_overrides_apply_as_compose_applies_them():
    for group, option, override in [("data", "digits", "data.steps=abc"), ("model", "feedforward", "model.hidden=128"),
                                    ("model", "conv", "model.image=[2,17,0]"),
                                    ("quant", "w8a8", "quant.rules.0.module_path='('"),
                                    ("optim", "adamw", "optim.optimizer.weight_decay=-1")]:
        composed = make_cfg(f"{group}={option}", override)
        applied = _apply(_option_cfg(group, option), override)
        assert OmegaConf.to_container(applied) == OmegaConf.to_container(composed)


def test_the_existing_messages_stay():
    for override, match in [
        ("trainer.batch_size=0", "trainer.batch_size=0 must be an integer >= 1"),
        ("mode.fp32_checkpoint=/no/such/ckpt", "'/no/such/ckpt' does not exist"),
        ("data.steps=0", "data.steps must be positive, got 0"),
        ("data.n_train=0", "data.n_train must be positive, got 0"),
        ("quant.rules.0.weight_qtype=fp8", "'fp8' is not supported; valid choices"),
    ]:
        with pytest.raises((ConfigError, quant.RecipeError), match=match):
            schema.validate(make_cfg("debug=fast", override))
    with pytest.raises(ConfigError, match=r"mode.bwd_qtype='int1'; valid choices: \[.*\] or null"):
        schema.validate(make_cfg("mode=qt", "mode.bwd_qtype=int1"))
    with pytest.raises(ConfigError, match="data.levels=1 must be an integer >= 2"):
        schema.validate(make_cfg("data=mnist1d", "data.levels=1"))


def test_a_key_the_target_takes_is_typed_from_its_signature():
    # a known target: optax.adam takes mu_dtype though no schema field names it
    schema.validate(_apply(_composed(), "+optim.optimizer.mu_dtype=null"))
    # an unknown target: checked against its signature alone
    sgd = _apply(_composed(), "optim.optimizer._target_=optax.sgd")
    schema.validate(_apply(sgd, "+optim.optimizer.momentum=0.9"))
    with pytest.raises(ConfigError, match=r"optim.optimizer.moment is not a key of optim.optimizer \(optax.sgd\)"):
        schema.validate(_apply(sgd, "+optim.optimizer.moment=0.9"))
    # a pipeline's knob (typed from snnexp.train.pipelines) on a mode that does not take it
    schema.validate(_apply(_option_cfg("mode", "ptq"), "+mode.quant_epochs=2"))
    with pytest.raises(ConfigError, match=r"mode.quant_epochs=-2 must be an integer >= 0"):
        schema.validate(_apply(_option_cfg("mode", "ptq"), "+mode.quant_epochs=-2"))
