"""Prompt bank files: ``NAME.safetensors`` (features) beside ``NAME.json`` (what produced them).

Both are written atomically (temporary file, then rename), and the key stored in the safetensors
header must match the JSON's, so a half-replaced pair is refused rather than silently mixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import DataError, MissingFileError
from ..files import atomic_write, write_text


def bank_pair_stem(path: str | Path) -> Path:
    """``banks/pets``, ``banks/pets.json`` and ``banks/pets.safetensors`` name one bank (its pair of files)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def save_bank_files(path: str | Path, features: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write the pair; returns the ``.safetensors`` path."""
    stem = bank_pair_stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in features.items()}
    weights, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"key": meta["key"]}))
    text = json.dumps(meta, indent=2, sort_keys=True)
    write_text(sidecar, text)
    return weights


#: The most a bank's JSON sidecar may hold (a real one is a few kB to a few MB): larger is refused unread.
MAX_SIDECAR_BYTES = 64 * 2**20


def load_bank_files(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The features and the record of a bank file pair. A pair that is not one (not safetensors, not JSON, nested
    too deep, a record without kind and class names, features not ``[N, D]`` for its N classes, halves of two
    different banks) is one :class:`DataError` naming the file; what the file holds is never quoted."""
    stem = bank_pair_stem(path)
    weights, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for f in (weights, sidecar):
        if not f.is_file():
            raise MissingFileError(f"prompt bank file missing: {f} (a bank is NAME.safetensors + NAME.json)")
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise DataError(f"prompt bank {sidecar} is over {MAX_SIDECAR_BYTES // 2**20} MiB: not a bank record")
    try:
        meta = json.loads(sidecar.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"prompt bank {sidecar} is not valid JSON ({type(err).__name__})") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored_key = (f.metadata() or {}).get("key")
            features = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"prompt bank {weights} is not a readable safetensors file ({type(err).__name__})") from None
    if not isinstance(meta, dict) or stored_key != meta.get("key"):
        raise DataError(f"prompt bank {stem}: its features and its metadata carry different keys (halves of two "
                        "banks that differ); write the bank again")
    _check_record(meta, features, stem)
    return features, meta


def _check_record(meta: Any, features: dict[str, Tensor], stem: Path) -> None:
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str) or not isinstance(names, list) \
            or not all(isinstance(n, str) for n in names) or not isinstance(meta.get("key"), str):
        raise DataError(f"prompt bank {stem}: its JSON is not a bank record (kind, class_names, key)")
    if not features or any(t.ndim != 2 or t.shape[0] != len(names) or not t.is_floating_point()
                           for t in features.values()):
        raise DataError(f"prompt bank {stem}: its features are not [N, D] float tensors for its {len(names)} "
                        "classes")
