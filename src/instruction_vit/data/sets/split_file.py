"""A CoOp split file (``data.split_file``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``) over the
images under ``data.root``; class names come from the file as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import DataConfig
from ...errors import ConfigError
from ..datasets import LabelledImages, coop_split
from . import DataSet, coop_file_source, register_dataset


@register_dataset("split_file")
class SplitFile(DataSet):
    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        if not cfg.split_file:
            raise ConfigError("data.dataset=split_file needs data.split_file (a CoOp split JSON)")
        return dict(coop_split(cfg.split_file, cfg.root))

    def source(self, cfg: DataConfig) -> dict[str, Any]:
        return coop_file_source(Path(cfg.split_file or ""))
