"""Counts of XLA compilations and persistent-cache hits in this process.

Kept apart from ``train`` (it imports only jax) so that a benchmark of
another framework can count its compilations without importing snnexp's
training stack.
"""

from __future__ import annotations

from typing import Any

import jax


class CompileStats:
    """Counts XLA compilations and persistent-cache hits (JAX monitoring events).

    JAX reports a program loaded from the persistent cache as a compilation
    too; ``run`` subtracts the hits to count the programs really compiled.
    """

    compilations = 0
    compile_seconds = 0.0
    cache_hits = 0
    _registered = False

    @classmethod
    def register(cls) -> None:
        """Installs the listeners once per process."""
        if cls._registered:
            return
        cls._registered = True

        def on_duration(event: str, seconds: float, **_: Any) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                cls.compilations += 1
                cls.compile_seconds += seconds

        def on_event(event: str, **_: Any) -> None:
            if event == "/jax/compilation_cache/cache_hits":
                cls.cache_hits += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)

    @classmethod
    def snapshot(cls) -> tuple[int, float, int]:
        """``(compilations, compile seconds, cache hits)`` so far."""
        return cls.compilations, cls.compile_seconds, cls.cache_hits
