"""Unreadable images: find them before training (cheaply), then stop the run or drop them (``data.bad_images``).

The probe of a file (:func:`probe_file`) decides readability without a full decode where it safely can:

* the header is parsed (``Image.open``: format, size; a file that is no image fails here), and a file over the
  pixel limit (``data.max_image_pixels``, what :func:`~instruction_vit.data.read_image` refuses) fails here too;
* PNG: ``verify()`` reads every chunk to ``IEND`` and checks its CRC, so truncation and corruption fail;
* JPEG: ``verify()`` checks nothing, so the file must end with the end-of-image marker ``FF D9`` (trailing NUL
  padding allowed); a truncated download does not. A JPEG that does not end so (a cut file, or one with data
  appended after its image, e.g. a "motion photo") is decoded in full to decide;
* every other format is decoded in full (``load()``).

``full_decode=True`` decodes every file in full: what :func:`~instruction_vit.data.read_image` does, so a file
that passes is one training can read. The fast probe misses only files corrupted inside their compressed data
(bit rot), which a full decode rejects in about 1 case in 8 anyway (libjpeg mostly decodes them with a
warning); :class:`~instruction_vit.data.TransformedImages` with ``bad_images="skip"`` and the store builder
catch those while reading. Costs (500x375 JPEG, one core): fast probe ~0.05 ms, full decode 1-4 ms.

Probes run in threads (Pillow's decoders, hashing and file reads release the GIL), so the scan works the same
in any process and needs no pickling.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .datasets import DataError, FileImages, LabelledImages, Subset, pixel_limit
from .images import DEFAULT_MAX_PIXELS, open_image, too_large

log = logging.getLogger("instruction_vit.data")

BAD_IMAGE_MODES = ("error", "skip")
Progress = Callable[[int, int], None]  # progress(done, total)


def image_files(data: LabelledImages) -> list[str | None]:
    """The file behind each sample (through any chain of :class:`Subset` views); ``None`` for in-memory
    images (Fashion-MNIST) or collections of unknown kind."""
    if isinstance(data, Subset):
        base = image_files(data.base)
        return [base[i] for i in data.indices]
    if isinstance(data, FileImages):
        root = str(data.root)
        return [str(Path(root) / p) for p in data.paths]
    return [None] * len(data)


@dataclass
class Probe:
    """What :func:`probe_file` found: the image's size (from its header) and why it is unreadable, if it is."""

    file: str
    size: tuple[int, int] | None = None  # (width, height)
    error: str | None = None
    sha256: str | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


def probe_file(path: str | Path, full_decode: bool = False, digest: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """Readability (see the module's notes; over ``max_pixels`` is unreadable), header size and optionally the
    sha256 of the file's bytes."""
    import hashlib

    path = str(path)
    probe = Probe(path)
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as err:
        probe.error = f"cannot open the file: {err.strerror or err}"
        return probe
    if digest:
        probe.sha256 = hashlib.sha256(content).hexdigest()
    try:
        with open_image(io.BytesIO(content), max_pixels=None) as img:
            probe.size = img.size
            if img.size[0] * img.size[1] > max_pixels:
                raise too_large(path, img.size, max_pixels)
            fmt = img.format
            if full_decode:
                img.load()
            elif fmt == "PNG":
                img.verify()
            elif fmt in ("JPEG", "MPO"):
                if not content.rstrip(b"\0").endswith(b"\xff\xd9"):
                    img.load()  # cut, or data after the image: the decoder decides
            else:
                img.load()
    except Exception as err:  # noqa: BLE001 - whatever Pillow raises (OSError, SyntaxError, bomb, ...) is a reason
        reason = str(err) or type(err).__name__
        probe.error = "not an image Pillow can read" if "cannot identify image file" in reason else reason
    return probe


def probe_files(files: list[str], workers: int = 0, full_decode: bool = False, digest: bool = False,
                progress: Progress | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Probe]:
    """:func:`probe_file` of each file, in order, in ``workers`` threads (0 or 1: this thread)."""
    total = len(files)
    if progress:
        progress(0, total)
    results: list[Probe] = []
    run = lambda f: probe_file(f, full_decode, digest, max_pixels)  # noqa: E731
    if workers > 1 and total > 1:
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, total, 4096):  # bounded: no million pending futures
                for probe in pool.map(run, files[start:start + 4096]):
                    results.append(probe)
                    if progress:
                        progress(len(results), total)
    else:
        for f in files:
            results.append(run(f))
            if progress:
                progress(len(results), total)
    return results


@dataclass
class BadImage:
    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


def scan_unreadable(data: LabelledImages, workers: int = 0, full_decode: bool = False,
                    progress: Progress | None = None) -> list[BadImage]:
    """The unreadable files of ``data`` (each once, in sample order; over its pixel limit counts); in-memory
    images are never unreadable."""
    files = list(dict.fromkeys(f for f in image_files(data) if f is not None))
    return [BadImage(p.file, p.error) for p in probe_files(files, workers, full_decode, progress=progress,
                                                           max_pixels=pixel_limit(data)) if not p.readable]


class SkipReport(dict):
    """Unreadable files found by :func:`drop_unreadable`: ``{split: [{"file", "reason"}, ...]}`` (a plain dict
    to JSON), with ``mode``, ``checked`` (distinct files probed) and ``count`` (distinct files skipped). A split
    that is the same collection as an earlier one (val = test when data.val_fraction=0) is listed once, under
    the earlier name; a file listed in two different splits is dropped from (and listed under) both."""

    def __init__(self, mode: str, checked: int = 0, files: dict[str, list[dict[str, str]]] | None = None):
        super().__init__(files or {})
        self.mode, self.checked = mode, checked

    @property
    def count(self) -> int:
        return len({b["file"] for bad in self.values() for b in bad})

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "checked": self.checked, "count": self.count,
                "per_split": {name: len(bad) for name, bad in self.items()}, "files": dict(self)}


def unreadable_error(bad: list[BadImage], where: str = "the data", show: int = 5) -> DataError:
    listed = "; ".join(f"{b.file} ({b.reason})" for b in bad[:show])
    more = f"; and {len(bad) - show} more" if len(bad) > show else ""
    return DataError(f"{len(bad)} unreadable image{'s' if len(bad) != 1 else ''} in {where}: {listed}{more}. "
                     "Remove them, or set data.bad_images=skip to leave them out of training and evaluation "
                     "(each is logged and counted)")


def drop_unreadable(splits: Mapping[str, LabelledImages], mode: str = "error", workers: int = 0,
                    full_decode: bool = False, progress: Progress | None = None
                    ) -> tuple[dict[str, LabelledImages], SkipReport]:
    """Probe every file of every split once; ``mode="error"``: raise a :class:`DataError` listing the unreadable
    files and the fix; ``mode="skip"``: log each once (warning, logger ``instruction_vit.data``) and return the
    splits without them, with the report. Splits with nothing to drop are returned as they are (the same object;
    a split that is another split, like val = test, stays so). A file over the splits' pixel limit
    (``data.max_image_pixels``) counts as unreadable."""
    if mode not in BAD_IMAGE_MODES:
        raise ConfigError(f"bad_images={mode!r}; choose one of {', '.join(BAD_IMAGE_MODES)}")
    per_split = {name: image_files(data) for name, data in splits.items()}
    unique = list(dict.fromkeys(f for files in per_split.values() for f in files if f is not None))
    limit = min((pixel_limit(data) for data in splits.values()), default=DEFAULT_MAX_PIXELS)
    reasons = {p.file: p.error for p in probe_files(unique, workers, full_decode, progress=progress,
                                                    max_pixels=limit) if not p.readable}
    report = SkipReport(mode, checked=len(unique))
    listed: set[int] = set()
    for name, files in per_split.items():
        if id(splits[name]) in listed:
            continue
        listed.add(id(splits[name]))
        report[name] = [BadImage(f, reasons[f]).to_dict() for f in dict.fromkeys(f for f in files if f in reasons)]
    if not reasons:
        return dict(splits), report
    bad = [BadImage(f, r) for f, r in reasons.items()]
    if mode == "error":
        raise unreadable_error(bad, "the data (" + ", ".join(f"{n}: {len(b)}" for n, b in report.items() if b) + ")")
    for b in bad:
        log.warning("skipping unreadable image %s: %s", b.file, b.reason)
    done: dict[int, LabelledImages] = {}
    out: dict[str, LabelledImages] = {}
    for name, data in splits.items():
        if id(data) not in done:
            keep = [i for i, f in enumerate(per_split[name]) if f not in reasons]
            done[id(data)] = data if len(keep) == len(data) else Subset(data, keep)
            if not keep:
                raise DataError(f"every image of the {name} split is unreadable (e.g. {per_split[name][0]}); "
                                "check data.root")
        out[name] = done[id(data)]
    return out, report

