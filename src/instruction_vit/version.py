"""The installed package's version, read from its metadata (a leaf: the model card and the ONNX metadata record
it, ``instruction_vit.__version__`` shows it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed() -> str:
    try:
        return version("instruction-vit")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "0+unknown"


__version__ = _installed()
