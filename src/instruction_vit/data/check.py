"""``check_data``: what is wrong with a dataset before it is trained on (``ivit data check``).

Every distinct file of the splits is read once: its bytes are hashed (sha256, for duplicates), its size read
from its header, and it is decoded in full (``Image.open(...).load()``, what training does; ``full_decode=False``
uses the fast probe of :mod:`instruction_vit.data.scan` instead). Files are probed in threads (Pillow's
decoders, hashing and reads release the GIL). In-memory images (Fashion-MNIST) are hashed from their pixels;
they are never unreadable and, being one fixed size by design, are not checked for size.

Problems (``kind``):

* ``unreadable``: files that fail to decode, or are over ``data.max_image_pixels`` (error);
* ``cross_split_duplicate``: byte-identical files (or one file) in two splits, e.g. train and test: leakage
  (error; the pairs are listed);
* ``tiny``: images smaller than ``min_size`` px on their shorter side (warning);
* ``too_few_images``: classes with fewer than ``min_per_class`` training images (``min(min_per_class,
  data.shots)`` for a few-shot config) (warning);
* ``no_eval_images``: classes with no val or no test images after the split (warning);
* ``duplicate_within_split``: extra copies of a file inside one split (warning; counted).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig, resolved_workers
from .datasets import ArrayImages, LabelledImages, Subset
from .scan import Progress, image_files, probe_files
from .splits import load_splits, split_info

SHOW = 5  # files named per problem in lines()


@dataclass
class Problem:
    kind: str
    message: str
    files: list[str] = field(default_factory=list)
    severity: str = "warning"  # error | warning
    pairs: list[tuple[str, str]] = field(default_factory=list)  # cross_split_duplicate: (file, its copy)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pairs"] = [list(p) for p in self.pairs]
        return out


@dataclass
class DataReport:
    dataset: str
    root: str
    sizes: dict[str, int]
    class_names: list[str]
    class_counts: dict[str, dict[str, int]]  # split -> class name -> images
    files_checked: int
    seconds: float
    settings: dict[str, Any]  # thresholds and decode mode used
    split: dict[str, Any]  # split_info of the splits
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem of any kind."""
        return not self.problems

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def problem(self, kind: str) -> Problem | None:
        return next((p for p in self.problems if p.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [p.to_dict() for p in self.problems]
        out["ok"] = self.ok
        return out

    def lines(self) -> list[str]:
        """Human lines: the data, its splits, then each problem with a few of its files."""
        sizes = ", ".join(f"{name} {n}" for name, n in self.sizes.items())
        out = [f"{self.dataset} at {self.root}: {len(self.class_names)} classes; {sizes} "
               f"({self.files_checked} files checked in {self.seconds:.1f}s)",
               f"split: {self.split.get('source', '?')}"
               + (f" ({self.split['split_file']})" if self.split.get("split_file") else "")]
        for name, counts in self.class_counts.items():
            if counts:
                values = sorted(counts.values())
                spread = f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"
                out.append(f"  {name}: {spread} images per class")
        if self.ok:
            out.append("no problems found")
            return out
        for p in self.problems:
            out.append(f"{p.severity}: {p.message}")
            if p.pairs:
                out += [f"    {a} == {b}" for a, b in p.pairs[:SHOW]]
                if len(p.pairs) > SHOW:
                    out.append(f"    ... and {len(p.pairs) - SHOW} more pairs")
            else:
                out += [f"    {f}" for f in p.files[:SHOW]]
                if len(p.files) > SHOW:
                    out.append(f"    ... and {len(p.files) - SHOW} more")
        return out


def _array_item(data: LabelledImages, index: int) -> tuple[ArrayImages, int] | None:
    while isinstance(data, Subset):
        data, index = data.base, data.indices[index]
    return (data, index) if isinstance(data, ArrayImages) else None


def check_data(source: str | Path | DataConfig, min_size: int = 32, min_per_class: int = 5,
               full_decode: bool = True, workers: int | None = None,
               progress: Progress | None = None) -> DataReport:
    """Check an image folder (one subfolder per class; split as ``data.dataset=folder`` with the default
    val_fraction and split_seed) or any :class:`DataConfig` that :func:`load_splits` reads; see the module's
    notes for what is checked. ``workers``: probing threads (``None``: ``min(8, CPU count)``);
    ``progress(done, total)`` is called as files are checked."""
    started = time.time()
    cfg = source if isinstance(source, DataConfig) else DataConfig(dataset="folder", root=str(source))
    splits = load_splits(cfg)
    names = [n for n in ("train", "val", "test") if n in splits]
    if splits.get("val") is not None and splits["val"] is splits.get("test"):  # val_fraction=0: val is test
        names.remove("val")
    workers = resolved_workers(DataConfig(num_workers=workers))
    class_names = splits["train"].class_names

    # items: (split, key, label); key = the file's path, or the image id of an in-memory image
    items: list[tuple[str, str, int]] = []
    arrays: dict[str, tuple[ArrayImages, int]] = {}
    for name in names:
        data = splits[name]
        for i, (f, y) in enumerate(zip(image_files(data), data.labels)):
            if f is None:
                held = _array_item(data, i)
                f = data.image_id(i)
                if held is not None:
                    arrays[f] = held
            items.append((name, f, y))
    files = list(dict.fromkeys(key for _, key, _ in items if key not in arrays))
    probes = {p.file: p for p in probe_files(files, workers, full_decode, digest=True, progress=progress,
                                             max_pixels=cfg.max_image_pixels)}
    digest = {key: p.sha256 for key, p in probes.items()}
    for key, (array, index) in arrays.items():
        digest[key] = hashlib.sha256(array.images[index].tobytes()).hexdigest()

    problems: list[Problem] = []
    bad = [p for p in probes.values() if not p.readable]
    if bad:
        problems.append(Problem("unreadable", f"{len(bad)} file{_s(bad)} cannot be decoded (first: {bad[0].file}: "
                                f"{bad[0].error}); remove them, or train with data.bad_images=skip",
                                [p.file for p in bad], "error"))
    tiny = [p for p in probes.values() if p.size is not None and min(p.size) < min_size]
    if tiny:
        smallest = min(tiny, key=lambda p: min(p.size))
        problems.append(Problem("tiny", f"{len(tiny)} image{_s(tiny)} smaller than {min_size} px on the shorter "
                                f"side (smallest {smallest.size[0]}x{smallest.size[1]}: {smallest.file})",
                                [p.file for p in tiny]))

    counts = {name: {c: 0 for c in class_names} for name in names}
    for name, _, y in items:
        counts[name][class_names[y]] += 1
    need = min(min_per_class, cfg.shots) if cfg.shots is not None else min_per_class
    few = [c for c, n in counts["train"].items() if n < need]
    if few:
        listed = ", ".join(f"{c} ({counts['train'][c]})" for c in few[:10]) + (" ..." if len(few) > 10 else "")
        problems.append(Problem("too_few_images", f"{len(few)} class{'es' if len(few) != 1 else ''} with fewer "
                                f"than {need} training images: {listed}", [_class_dir(cfg, c) for c in few]))
    empty = {name: [c for c, n in counts[name].items() if n == 0] for name in ("val", "test") if name in counts}
    if any(empty.values()):
        missing = list(dict.fromkeys(c for classes in empty.values() for c in classes))
        problems.append(Problem("no_eval_images", "; ".join(
            f"{len(cs)} class{'es' if len(cs) != 1 else ''} with no {name} images: " + ", ".join(cs[:10])
            + (" ..." if len(cs) > 10 else "") for name, cs in empty.items() if cs)
            + "; add images or raise data.val_fraction", [_class_dir(cfg, c) for c in missing]))

    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)  # digest -> [(split, key)], distinct entries
    for name, key, _ in dict.fromkeys((n, k, 0) for n, k, _ in items):
        if digest.get(key):
            by_hash[digest[key]].append((name, key))
    cross: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    within: dict[str, list[str]] = defaultdict(list)
    for entries in by_hash.values():
        if len(entries) < 2:
            continue
        per_split: dict[str, list[str]] = defaultdict(list)
        for name, key in entries:
            per_split[name].append(key)
        for name, keys in per_split.items():
            if len(keys) > 1:
                within[name] += keys[1:]  # the extra copies
        order = [n for n in names if n in per_split]
        for i, a in enumerate(order):
            for b in order[i + 1:]:
                cross[(a, b)] += [(x, y) for x in per_split[a] for y in per_split[b]]
    for (a, b), pairs in cross.items():
        involved = list(dict.fromkeys(f for pair in pairs for f in pair))
        same = sum(x == y for x, y in pairs)
        problems.append(Problem(
            "cross_split_duplicate",
            f"{len(pairs)} image{_s(pairs)} of {b} {'is' if len(pairs) == 1 else 'are'} byte-identical to images of "
            f"{a} (leakage{f'; {same} the very same file' if same else ''})", involved, "error", pairs))
    for name, extra in within.items():
        problems.append(Problem("duplicate_within_split", f"{len(extra)} extra cop{'ies' if len(extra) != 1 else 'y'}"
                                f" of byte-identical files in {name}", extra))

    order = ("unreadable", "cross_split_duplicate", "no_eval_images", "too_few_images", "tiny",
             "duplicate_within_split")
    problems.sort(key=lambda p: order.index(p.kind))
    info = split_info(cfg, splits)
    return DataReport(
        dataset=cfg.dataset, root=info["root"], sizes={n: len(splits[n]) for n in names}, class_names=class_names,
        class_counts=counts, files_checked=len(files) + len(arrays), seconds=time.time() - started,
        settings={"min_size": min_size, "min_per_class": need, "full_decode": full_decode}, split=info,
        problems=problems)


def _s(seq) -> str:
    return "s" if len(seq) != 1 else ""


def _class_dir(cfg: DataConfig, name: str) -> str:
    """The class's folder for an image folder; else its name."""
    if cfg.dataset == "folder":
        return str(Path(cfg.root).expanduser().resolve() / name)
    return name
