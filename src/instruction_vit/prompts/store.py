"""Prompt bank files: ``NAME.safetensors`` (features) beside ``NAME.json`` (what produced them).

Both are written atomically (temporary file, then rename), and the key stored in the safetensors
header must match the JSON's, so a half-replaced pair is refused rather than silently mixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import DataError, MissingFileError
from ..files import atomic_write


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def save_bank_files(path: str | Path, features: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write the pair; returns the ``.safetensors`` path."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in features.items()}
    weights, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"key": meta["key"]}))
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return weights


def load_bank_files(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    stem = _stem(path)
    weights, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for f in (weights, sidecar):
        if not f.is_file():
            raise MissingFileError(f"prompt bank file missing: {f} (a bank is NAME.safetensors + NAME.json)")
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    with safe_open(str(weights), framework="pt") as f:
        stored_key = (f.metadata() or {}).get("key")
        features = {name: f.get_tensor(name) for name in f.keys()}
    if stored_key != meta.get("key"):
        raise DataError(f"prompt bank {stem}: features (key {stored_key}) and metadata (key {meta.get('key')}) differ")
    return features, meta
