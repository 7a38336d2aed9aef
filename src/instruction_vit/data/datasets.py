"""Labelled image collections that carry their class names.

Every collection has ``class_names``, ``labels`` (one per sample), ``load_image(i)`` (a PIL RGB image),
``load_reduced(i, min_side)`` (the same, reduced while decoding where it is far larger than ``min_side``; see
:mod:`instruction_vit.data.images`) and ``image_id(i)`` (a stable identifier), which is what prompt banks and data
loaders need. Files are read by :func:`read_image`, under the collection's pixel limit (``max_pixels``). Sources:

* Fashion-MNIST from its original idx files (``.gz`` or not), e.g. Debian's ``dataset-fashion-mnist``;
* an image folder, one subfolder per class;
* a CoOp split file ``{"train"|"val"|"test": [[relpath, label, classname], ...]}`` over an image root.

The data sets ``data.dataset`` names (:mod:`instruction_vit.data.sets`) read through these. The one seeded per-class
split (:func:`per_class_split`) serves every recipe that divides a set per class.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .images import DEFAULT_MAX_PIXELS, decode, rgb_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


class LabelledImages:
    """Base of the collections: class names, labels, and images by index."""

    class_names: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def load_reduced(self, index: int, min_side: int | None) -> Image.Image:
        """:meth:`load_image`, reduced while decoding for a transform that resizes the shorter side to ``min_side``
        (bit-identical where the image is not over twice that); collections that cannot reduce load it whole."""
        return self.load_image(index)

    def image_id(self, index: int) -> str:
        raise NotImplementedError

    @property
    def location(self) -> str:
        """Where the images are (an absolute folder, or a name): with :meth:`image_id`, what identifies an image
        in cache keys, so that another copy of a data set under the same relative paths is not taken for this one."""
        return ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ArrayImages(LabelledImages):
    """Images held in memory as a uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]``."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], class_names: Sequence[str], name: str):
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.class_names, self.name = images, [int(x) for x in labels], list(class_names), name

    def load_image(self, index: int) -> Image.Image:
        return rgb_image(self.images[index])

    @property
    def location(self) -> str:
        return self.name

    def image_id(self, index: int) -> str:
        return f"{self.name}/{index}"


class FileImages(LabelledImages):
    """Images read from files under ``root``; a file over ``max_pixels`` (width x height, from its header) is
    refused before it is decoded (``data.max_image_pixels`` sets it for a run's splits)."""

    def __init__(self, root: str | Path, paths: Sequence[str], labels: Sequence[int], class_names: Sequence[str],
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root, self.paths = Path(root), list(paths)
        self.labels, self.class_names = [int(x) for x in labels], list(class_names)
        self.max_pixels = max_pixels

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.root / self.paths[index], max_pixels=self.max_pixels)

    def load_reduced(self, index: int, min_side: int | None) -> Image.Image:
        return read_image(self.root / self.paths[index], min_side=min_side, max_pixels=self.max_pixels)

    @property
    def location(self) -> str:
        return str(self.root.expanduser().resolve())

    def image_id(self, index: int) -> str:
        return self.paths[index]


def read_image(path: str | Path, min_side: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> Image.Image:
    """An RGB PIL image (the one reader of image files: training, evaluation, predict). A missing, unreadable or
    truncated file, or one over ``max_pixels`` (width x height from its header, checked before decoding; ``None``:
    no limit), raises :class:`DataError` naming it. With ``min_side`` (the shorter side the caller's transform
    resizes to), an image at least 6x larger is reduced while decoding (JPEG at 1/2..1/8 scale, then an antialiased
    resize) to a shorter side of at least 3x ``min_side``; smaller ones are decoded whole, as without it. Modes are
    converted by the one rule of :mod:`instruction_vit.data.images` (16-bit: high byte; alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        return decode(path, min_side, max_pixels)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err} (is the file truncated or not an image?)") from err


def pixel_limit(data: LabelledImages) -> int:
    """The pixel limit the files of ``data`` are read under (through :class:`Subset` views); the default for
    collections that read no files."""
    while isinstance(data, Subset):
        data = data.base
    return data.max_pixels if isinstance(data, FileImages) else DEFAULT_MAX_PIXELS


def with_pixel_limit(data: LabelledImages, max_pixels: int) -> LabelledImages:
    """``data`` with its files (through any :class:`Subset` views) read under ``max_pixels``; returns ``data``."""
    base = data
    while isinstance(base, Subset):
        base = base.base
    if isinstance(base, FileImages):
        base.max_pixels = max_pixels
    return data


@dataclass
class Subset(LabelledImages):
    """A view of some samples of a collection, in the given order."""

    base: LabelledImages
    indices: list[int]

    def __post_init__(self) -> None:
        self.class_names = self.base.class_names
        self.labels = [self.base.labels[i] for i in self.indices]

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(self.indices[index])

    def load_reduced(self, index: int, min_side: int | None) -> Image.Image:
        return self.base.load_reduced(self.indices[index], min_side)

    def image_id(self, index: int) -> str:
        return self.base.image_id(self.indices[index])

    @property
    def location(self) -> str:
        return self.base.location


# -- sources -----------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


def fashion_mnist_file(root: Path, stem: str) -> Path:
    """The idx file ``stem`` (or ``stem.gz``) under ``root`` or torchvision's ``root/FashionMNIST/raw``."""
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found under {root}; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or set data.root to the folder holding the idx files"
    )


def fashion_mnist(root: str | Path = "/usr/share/datasets/fashion-mnist") -> dict[str, ArrayImages]:
    """``{"train": 60k, "test": 10k}`` Fashion-MNIST from its idx files."""
    root = Path(root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(fashion_mnist_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(fashion_mnist_file(root, f"{prefix}-labels-idx1-ubyte"))
        out[split] = ArrayImages(images, labels.tolist(), FASHION_MNIST_CLASSES, f"fashion_mnist/{split}")
    return out


def image_folder(root: str | Path) -> FileImages:
    """One subfolder per class (sorted names are the classes, in label order), images inside."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders (expected {root}/CLASS_NAME/IMAGE.jpg)")
    _check_class_links(root, classes)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += [str(p.relative_to(root)) for p in files]
        labels += [label] * len(files)
    return FileImages(root, paths, labels, classes)


def _check_class_links(root: Path, classes: Sequence[str]) -> None:
    """A class folder that is a link to the data root (or above it), into another class folder, or to the same
    folder as another class would train images under two labels: refused (``ivit data check`` lists such copies as
    duplicates). Links to folders elsewhere are fine."""
    top = root.resolve()
    targets = {name: (root / name).resolve() for name in classes}
    for name, target in targets.items():
        if target == top or target in top.parents:
            raise DataError(f"class folder {root / name} is a link to the data root {root} (or above it): every image "
                            "would also be trained as that class; remove the link")
    for name, target in targets.items():
        for other, other_target in targets.items():
            if other != name and (target == other_target or other_target in target.parents):
                raise DataError(f"class folder {root / name} links into class folder {root / other}: its images would "
                                "be trained under two labels; remove the link or copy the images it should hold")


def coop_split(split_file: str | Path, root: str | Path) -> dict[str, FileImages]:
    """The splits of a CoOp split file; class names come from the file, in label order."""
    split_file, root = Path(split_file), Path(root)
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file}")
    try:
        content = json.loads(split_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"split file {split_file} is not valid JSON: {err}") from err
    if not isinstance(content, dict) or "train" not in content:
        raise DataError(f"split file {split_file} must map 'train' (and 'val', 'test') to [[path, label, name], ...]")
    names: dict[int, str] = {}
    for split, rows in content.items():
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3):
                raise DataError(f"{split_file}: entry {row!r} in {split!r} is not [relpath, label, classname]")
            _, label, name = row
            if names.setdefault(int(label), name) != name:
                raise DataError(f"{split_file}: label {label} is named both {names[int(label)]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{split_file}: labels must be 0..N-1, found {sorted(names)[:10]}...")
    class_names = [names[i] for i in range(len(names))]
    return {
        split: FileImages(root, [r[0] for r in rows], [r[1] for r in rows], class_names)
        for split, rows in content.items()
    }


# -- splitting ---------------------------------------------------------------------------------
def indices_by_class(labels: Sequence[int], num_classes: int) -> list[list[int]]:
    """The sample indices of each class ``0..num_classes-1``, ascending (labels outside the range belong to none)."""
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, y in enumerate(labels):
        if 0 <= y < num_classes:
            by_class[y].append(i)
    return by_class


def per_class_split(labels: Sequence[int], num_classes: int, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """The one seeded per-class split (CoOp's): each class in label order, with one ``random.Random(seed)`` for all,
    has its indices shuffled and cut into consecutive pieces of ``round(n * f)`` samples, one per fraction, the rest
    last. Returns ``len(fractions) + 1`` sorted index lists (a held-out ``(f,)`` gives ``[held, rest]``; Caltech-101's
    ``(0.5, 0.2)`` gives ``[train, val, test]``)."""
    rng = random.Random(seed)
    pieces: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for idx in indices_by_class(labels, num_classes):
        rng.shuffle(idx)
        start = 0
        for piece, fraction in zip(pieces, fractions):
            count = round(len(idx) * fraction)
            piece += idx[start : start + count]
            start += count
        pieces[-1] += idx[start:]
    return [sorted(piece) for piece in pieces]


def stratified_split(data: LabelledImages, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Seeded split into (rest, held-out ``fraction`` of each class): :func:`per_class_split` as views."""
    held, rest = per_class_split(data.labels, data.num_classes, (fraction,), seed)
    return Subset(data, rest), Subset(data, held)


def few_shot(data: LabelledImages, shots: int, seed: int) -> Subset:
    """CoOp's few-shot sampling: ``shots`` random samples of each class (all if it has fewer), seeded."""
    rng = random.Random(seed)
    chosen: list[int] = []
    for idx in indices_by_class(data.labels, data.num_classes):
        chosen += rng.sample(idx, min(shots, len(idx)))
    return Subset(data, sorted(chosen))


def class_subset(data: LabelledImages, which: str) -> LabelledImages:
    """Base-to-novel (CoOp): labels sorted, the first ceil(N/2) are ``base``, the rest ``novel``; kept samples
    are relabelled 0..M-1 and the class names cut to match."""
    if which == "all":
        return data
    n_base = (data.num_classes + 1) // 2
    keep = range(n_base) if which == "base" else range(n_base, data.num_classes)
    first = keep[0]
    indices = [i for i, y in enumerate(data.labels) if y in keep]
    view = Subset(data, indices)
    view.labels = [y - first for y in view.labels]
    view.class_names = data.class_names[first : first + len(keep)]
    return view


def balanced_limit(data: LabelledImages, limit: int | None, seed: int) -> LabelledImages:
    """At most ``limit`` samples, about equally many per class (seeded); the data itself if no limit."""
    if limit is None or limit >= len(data):
        return data
    rng = random.Random(seed)
    per_class = indices_by_class(data.labels, data.num_classes)
    for idx in per_class:
        rng.shuffle(idx)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        chosen += [idx[depth] for idx in per_class if depth < len(idx)][: limit - len(chosen)]
        depth += 1
    return Subset(data, sorted(chosen))
