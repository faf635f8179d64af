"""The package's config directory, and one option of a group read from it as Hydra would compose it.

``python -m snnexp`` composes from ``conf/`` (``snnexp/conf`` in an installed
wheel, the repository's ``conf/`` in an editable install). A knob that names
another group's option (``mode.stages``' recipes, ``mode.schedule``) is read
from the same directory with ``load_option``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from snnexp.errors import ConfigError

_PACKAGED = Path(__file__).resolve().parent / "conf"


def conf_dir() -> Path:
    """The config directory ``python -m snnexp`` composes from (``snnexp/conf``, else the repository's)."""
    return _PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "conf"


def options(group: str) -> list[str]:
    """The option names of ``group`` (``"quant"``, ``"optim/schedule"``): its YAML files, sorted."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def load_option(group: str, name: str) -> dict[str, Any]:
    """The option ``name`` of ``group`` as ``group=name`` would place it in the composed config, resolved.

    Hydra puts a group's option at the group's package (``quant``,
    ``optim.schedule``) and resolves its interpolations against the whole
    config; an option's own keys are all that such a file refers to
    (``conf/quant/bits.yaml``: ``${quant.weight_bits}``), so it is resolved
    inside a config that holds it alone.

    Args:
        group: a group folder of ``conf/`` (``"quant"``, ``"optim/schedule"``).
        name: an option of it (a file name without ``.yaml``).

    Returns:
        The option's keys as plain Python values.

    Raises:
        ConfigError: no such option (naming the valid ones), a defaults list
            (not supported here) or an interpolation outside the option.
    """
    path = conf_dir() / group / f"{name}.yaml"
    if not isinstance(name, str) or not name or not path.is_file():
        raise ConfigError(f"{group}={name!r} is not an option of conf/{group}; valid choices: {options(group)}")
    node = OmegaConf.load(path)
    if "defaults" in node:
        raise ConfigError(f"conf/{group}/{name}.yaml has a defaults list, which only a full composition applies")
    package = group.split("/")
    root: Any = node
    for key in reversed(package):
        root = {key: root}
    cfg = OmegaConf.create(root)
    try:
        return OmegaConf.to_container(OmegaConf.select(cfg, ".".join(package)), resolve=True)
    except Exception as e:  # noqa: BLE001 - OmegaConf raises several kinds
        raise ConfigError(f"conf/{group}/{name}.yaml: {str(e).splitlines()[0]}") from None
