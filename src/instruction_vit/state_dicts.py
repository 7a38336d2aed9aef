"""Reading a ``torch.save`` weights file as data (a leaf module: the backbone loader and the CLIP loader use it).

``torch.load(weights_only=True)``: tensors, containers and a few plain types are rebuilt, nothing else is unpickled
(no code runs); a TorchScript archive is refused by torch itself (the CLIP loader reads OpenAI's as data before
this). Memory-mapped where the file format allows. Errors are one line naming the file, never quoting it.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from .errors import WeightsError


def torch_load(path: str | Path) -> object:
    """The object a ``torch.save`` file holds, unpickled with ``weights_only=True`` (``argparse.Namespace``, which
    DINO/MAE checkpoints store their arguments in, allowed too); a file that pickles anything else, or is damaged,
    is a :class:`WeightsError` with the fix."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        raise WeightsError(f"{path}: cannot read it as a torch state dict: it pickles Python objects other than "
                           "tensors, which are never unpickled here; save the state dict alone "
                           "(torch.save(model.state_dict(), path)) or as .safetensors") from err
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file fails in many ways; its text is not quoted
        raise WeightsError(f"{path}: cannot read it as a torch state dict ({type(err).__name__}); save the state "
                           "dict alone (torch.save(model.state_dict(), path)) or as .safetensors") from err
