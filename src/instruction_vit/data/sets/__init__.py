"""The data sets, one module each in this package: a :class:`DataSet` subclass registered under its name.

Adding a data set is one new file here, e.g. ``stripes.py``::

    from . import DataSet, file_records, register_dataset

    @register_dataset("stripes")                         # the name data.dataset takes
    class Stripes(DataSet):
        coop_template = "a photo of {}, a pattern."      # template_set("coop:stripes"); None for no template

        def read(self, cfg):                             # {"train", "test"[, "val"]}: LabelledImages
            ...

        def source(self, cfg):                           # what identifies the splits, without walking the images
            return {"source": "official", "files": file_records([...])}

A data set whose folder may hold a CoOp split file also sets ``folder``, ``split_file`` and ``image_dir``: the base
class then reads the split file when it is there and calls ``read`` only when it is not. Another distribution adds
a data set through the entry-point group ``instruction_vit.datasets`` (``stripes = "my_pkg.stripes:Stripes"``).
:func:`~instruction_vit.data.load_splits`, :func:`~instruction_vit.data.split_identity` and
``template_set("coop:NAME")`` ask this registry; nothing else lists data sets.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ...config import DataConfig
from ...errors import DataError
from ...files import file_sha256
from ...registry import Registry
from ..datasets import FileImages, LabelledImages, coop_split, per_class_split

DATASETS: Registry[type[DataSet]] = Registry("data set", "instruction_vit.data.sets", "instruction_vit.datasets")
D = TypeVar("D", bound="type[DataSet]")


class DataSet(ABC):
    """One data set: how its splits are read from a :class:`DataConfig`, what identifies them, its CoOp details.

    Class attributes (the defaults fit a data set that is all of ``data.root`` and has no CoOp template):

    * ``name``: the registered name (``data.dataset``), set by :func:`register_dataset`;
    * ``coop_template``: CoOp's per-dataset prompt template (``template_set("coop:NAME")``), or None;
    * ``folder``: the data set's folder under ``data.root``, or None when ``data.root`` is the data set;
    * ``split_file``: the CoOp split file in ``folder`` that, when present, gives the splits instead of :meth:`read`;
    * ``image_dir``: the folder inside ``folder`` that the split file's paths are relative to.
    """

    name: str = ""
    coop_template: str | None = None
    folder: str | None = None
    split_file: str | None = None
    image_dir: str = ""

    @abstractmethod
    def read(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        """The splits from the data set's own layout: ``{"train", "test"}``, and ``"val"`` where it has one
        (``load_splits`` carves a missing val from train)."""

    @abstractmethod
    def source(self, cfg: DataConfig) -> dict[str, Any]:
        """Where :meth:`read`'s split membership comes from, without walking the images (``split_identity``):
        ``{"source": "official", "files": file_records(...)}``, a seeded recipe, ... A ``"val_from_train": None``
        entry says that ``load_splits`` carves val from train."""

    def home(self, cfg: DataConfig) -> Path:
        """The data set's folder: ``folder`` under ``data.root``, or ``data.root`` itself."""
        root = Path(cfg.root).expanduser()
        return root / self.folder if self.folder is not None else root

    def coop_split_path(self, cfg: DataConfig) -> Path | None:
        """The CoOp split file in the data set's folder, if the data set has one and it is there."""
        if self.split_file is None:
            return None
        path = self.home(cfg) / self.split_file
        return path if path.is_file() else None

    def load(self, cfg: DataConfig) -> dict[str, LabelledImages]:
        """The splits as ``load_splits`` starts from them: those of the CoOp split file in the data set's folder
        when present (class names cleaned as CoOp does), else :meth:`read`."""
        home = self.home(cfg)
        if self.folder is not None and not home.is_dir():
            raise DataError(f"{self.name}: folder {home} not found; data.root must be the folder that holds "
                            f"{self.folder}/ (see docs/datasets.md for where each file goes)")
        split_file = self.coop_split_path(cfg)
        if split_file is None:
            return self.read(cfg)
        splits = coop_split(split_file, home / self.image_dir)
        for data in splits.values():
            data.class_names = [clean_name(c) for c in data.class_names]
        return dict(splits)

    def provenance(self, cfg: DataConfig) -> dict[str, Any]:
        """What :meth:`load` reads the split membership from: the CoOp split file (path, sha256) when present,
        else :meth:`source`."""
        split_file = self.coop_split_path(cfg)
        return coop_file_source(split_file) if split_file is not None else self.source(cfg)


def register_dataset(name: str) -> Callable[[D], D]:
    """Class decorator: register a :class:`DataSet` subclass as ``data.dataset=name``."""

    return DATASETS.class_decorator(name, _check_declares)


def dataset(name: str) -> DataSet:
    """The data set called ``name``; an unknown name is a :class:`ConfigError` naming the closest ones."""
    return DATASETS.instance(name, _check_declares)


def list_datasets() -> list[str]:
    """The names ``data.dataset`` accepts: this package's data sets and those of installed entry points."""
    return DATASETS.names()


def _check_declares(name: str, cls: object) -> None:
    """A registered data set is a :class:`DataSet` subclass that defines ``read`` and ``source``."""
    if not (isinstance(cls, type) and issubclass(cls, DataSet)):
        raise TypeError(f"data set {name!r} is registered as {cls!r}; register a DataSet subclass")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"data set {name!r} ({cls.__module__}.{cls.__qualname__}) does not define "
                        f"{', '.join(missing)} (see instruction_vit.data.sets.DataSet)")


# -- helpers shared by the data sets ---------------------------------------------------------------
def clean_name(name: str) -> str:
    """A class name as CoOp's prompt learner encodes it: underscores become spaces."""
    return name.replace("_", " ").strip()


def need(path: Path, name: str) -> Path:
    """``path``, which data set ``name``'s layout must have; a :class:`DataError` when it is missing."""
    if not path.exists():
        raise DataError(f"{name}: {path} not found (see docs/datasets.md for the expected layout)")
    return path


def loadmat(path: Path) -> dict[str, Any]:
    """A MATLAB annotation file (scipy, squeezed)."""
    from scipy.io import loadmat as _loadmat

    return _loadmat(str(path), squeeze_me=True)


def carve_val(data: FileImages, fraction: float, seed: int) -> tuple[FileImages, FileImages]:
    """CoOp's seeded per-class split of an official train(val) set into (train, val ``fraction`` of each class)."""
    val, train = per_class_split(data.labels, data.num_classes, (fraction,), seed)
    return _take(data, train), _take(data, val)


def _take(data: FileImages, indices: Sequence[int]) -> FileImages:
    return FileImages(data.root, [data.paths[i] for i in indices], [data.labels[i] for i in indices], data.class_names)


def absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def file_records(paths: Sequence[Path]) -> list[dict[str, str | None]]:
    """``[{"path", "sha256"}]`` of the files that define a split (sha256 None for a missing file)."""
    return [{"path": absolute(p), "sha256": file_sha256(p) if Path(p).is_file() else None} for p in paths]


def coop_file_source(path: Path) -> dict[str, Any]:
    """The provenance of splits read from the CoOp split file ``path``: its path and sha256 (and a val carved from
    train when the file has none)."""
    info: dict[str, Any] = {"source": "coop_split_file", "split_file": absolute(path),
                            "split_file_sha256": file_sha256(path) if Path(path).is_file() else None}
    try:  # a file with no val split has one carved from train (val_fraction, split_seed)
        has_val = "val" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        has_val = True  # unreadable: load_splits will say so
    if not has_val:
        info["val_from_train"] = None  # filled by split_identity
    return info


__all__ = ["DATASETS", "DataSet", "absolute", "carve_val", "clean_name", "coop_file_source", "dataset",
           "file_records", "list_datasets", "loadmat", "need", "register_dataset"]
