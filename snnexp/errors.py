"""The errors a user can cause: each is printed as one line, with the bad value and the choices.

``snnexp.quant.RecipeError`` (a recipe) and ``snnexp.data.DataError`` (a data
file) are the other two; all are ``ValueError`` subclasses.
"""


class ConfigError(ValueError):
    """A configuration that cannot run as written."""


class NumericalError(FloatingPointError):
    """A NaN or inf in the loss or the parameters."""
