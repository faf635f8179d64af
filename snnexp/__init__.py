"""snnexp: declarative quantization experiments for spiking neural networks."""

from snnexp import paths  # noqa: F401  (registers the config's snnexp_user_cache resolver)

__version__ = "0.1.0"
