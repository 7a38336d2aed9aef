"""Errors shared by several layers (a leaf module)."""


class WeightsError(ValueError):
    """Weights that do not fit the model they are given to (the run stops; nothing trains from random init)."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (offline, or a tag that does not exist); says what to pass."""
