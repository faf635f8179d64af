"""The errors a user can cause: each is printed as one line, with the bad value and the choices.

``ConfigError`` and ``NumericalError`` live here; ``snnexp.quant.RecipeError``
(a recipe), ``snnexp.data.DataError`` (a data file) and
``snnexp.checkpoint.CheckpointError`` (a checkpoint of another shape) beside
the code that raises them. ``USER_ERRORS`` collects them all.
"""


class ConfigError(ValueError):
    """A configuration that cannot run as written."""


class NumericalError(FloatingPointError):
    """A NaN or inf in the loss or the parameters."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from snnexp.checkpoint import CheckpointError
    from snnexp.data.dataset import DataError
    from snnexp.quant.recipes import RecipeError

    return ConfigError, NumericalError, RecipeError, DataError, CheckpointError


# What a user can fix: printed as one line (the launcher's ``USER_ERRORS``).
USER_ERRORS = _user_errors()
