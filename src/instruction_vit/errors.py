"""Errors shared by several layers (a leaf module)."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (offline, or a tag that does not exist); says what to pass."""
