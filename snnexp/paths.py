"""Where snnexp keeps what outlives a run: the per-user cache directory.

The config reads it through the ``snnexp_user_cache`` resolver
(``compile_cache: ${oc.env:SNNEXP_COMPILE_CACHE,${snnexp_user_cache:jax}}``),
so runs started from any directory share one JAX compilation cache and none
is ever written into a checkout.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
from omegaconf import OmegaConf


def user_cache(sub: str = "") -> str:
    """``<user cache dir>/snnexp/<sub>``: ``$XDG_CACHE_HOME`` (else ``~/.cache``) on Linux, the OS's own elsewhere."""
    return str(Path(platformdirs.user_cache_dir("snnexp")) / sub)


if not OmegaConf.has_resolver("snnexp_user_cache"):
    OmegaConf.register_new_resolver("snnexp_user_cache", user_cache)
