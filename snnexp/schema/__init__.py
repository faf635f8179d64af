"""The schema of every config group: ``validate(cfg)`` checks types and ranges before any data loads.

Each group option kind is a dataclass below: one typed field per key, its
range or choices in the field's metadata (a ``Check``). An option is matched
to its dataclass by its ``_target_`` (data loaders, model classes, spyx
neurons and surrogates, optax optimizers and schedules, mode pipelines); the
groups without a target (``optim``, ``logger``, ``quant``, ``trainer``, the
top level) have one dataclass each. A key that the target's signature takes
but no dataclass names (a key added to a target and its YAML together) is
typed from the signature's hints; a target snnexp does not know is checked
against its signature alone. The mode pipelines are typed from their
signatures only (``snnexp.train.pipelines``), and the recipe rules from
``snnexp.quant.Rule``, then ``quant.parse_recipe``.

A bad value fails with one line that names the key, the value and what is
allowed::

    optim.lr='abc' must be a number > 0
    model.hidden=[0] must be a non-empty list of integers >= 1, one width per layer (e.g. [128])
    model.hiden is not a key of model (snnexp.models.FeedForwardSNN); valid keys: [...]

Numbers are not taken from strings (``'3'`` is not an integer), nor booleans
from numbers.
"""

from snnexp.schema.validate import validate

__all__ = ["validate"]
