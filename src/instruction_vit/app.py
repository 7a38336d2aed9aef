"""The demo page (``ivit serve RUN``): drop an image, edit the class names, see the top-5 of each output.

A Gradio page over :func:`instruction_vit.api.load_classifier`. What it shows is what ``ivit predict`` computes:
the same prompts (:meth:`Classifier.class_prompts`) and the same probabilities (:meth:`Classifier.probabilities`),
and the output ``ivit predict`` ranks by is marked. The checkpoint's own classes show every output the model has
(combined, head, score); other class names show only the outputs that score the names given: the head knows only
the training classes, so it is hidden for Instruction-ViT (a CoOp-style head reads the class names and stays).

Gradio is an optional extra (the ``app`` extra: ``pip install -e '.[app]'`` in a checkout), imported only when the page
is built. The page
works offline: no share link, no analytics, system fonts, nothing fetched from the Hugging Face Hub.

A page open to visitors has limits, each checked before the model is touched: uploads of at most ``max_file_size``
(gradio refuses larger ones before keeping them), at most :data:`MAX_NAMES` class names of :data:`MAX_NAME_CHARS`
characters each, images only (read by :func:`instruction_vit.data.read_image`, never by gradio), one request at a
time on the model with at most ``queue_size`` waiting (more: "too busy"). Nothing a visitor sends is written into
the run or the prompt cache: prompts for new names are kept in memory (a bounded LRU), uploads are deleted once
read and gradio's temporary files swept (:data:`SWEEP`). A visitor's mistake is one message on the page and one
line on the console, never a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .api import build_prompts, load_classifier, load_encoder
from .limits import (CONCURRENCY, IMAGE_PIXELS_KEPT, IMAGES_KEPT, MAX_FILE_SIZE, MAX_NAME_CHARS, MAX_NAMES,
                     MAX_TEXT_CHARS, PROMPT_SETS, QUEUE_SIZE, SWEEP)
from .data import read_image
from .errors import ConfigError, DataError, UserError
from .outputs import ROUTES, capabilities, route_probabilities
from .prompts.encoders import joint_space
from .prompts.selection import cosine_scores, forward_selected

log = logging.getLogger(__name__)

#: The outputs a model may have, in the order the page shows them.
TITLES = {"combined": "combined (head + score)", "head": "head", "score": "score (prompts)"}
TOP = 5
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
#: Small images (a 28-px Fashion-MNIST item) shown large, pixels kept sharp.
CSS = "#ivit-image img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}"
SYSTEM_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]

UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def check_page_limits(names: Sequence[str]) -> None:
    """At most :data:`MAX_NAMES` names of at most :data:`MAX_NAME_CHARS` characters each (the message quotes no
    name: one may be megabytes long)."""
    if len(names) > MAX_NAMES:
        raise ConfigError(f"{len(names)} class names given; the page takes at most {MAX_NAMES}: give fewer")
    for i, name in enumerate(names):
        if len(name) > MAX_NAME_CHARS:
            raise ConfigError(f"class name {i + 1} has {len(name)} characters; the page takes at most "
                              f"{MAX_NAME_CHARS} per name: shorten it")


def parse_class_names(text: str) -> list[str]:
    """Class names typed one per line or comma-separated (blank entries dropped), within the page's limits
    (:func:`check_page_limits`; a text too long to hold them is refused before it is split); two equal names are an
    error, since their bars could not be told apart."""
    if text is not None and not isinstance(text, str):
        raise ConfigError("the class names must be text: one per line or comma-separated")
    if len(text or "") > MAX_TEXT_CHARS:
        raise ConfigError(f"the class names are {len(text)} characters long; the page takes at most {MAX_TEXT_CHARS} "
                          f"({MAX_NAMES} names of up to {MAX_NAME_CHARS} characters): give fewer or shorter names")
    names = [n.strip() for n in re.split(r"[\n,]", text or "") if n.strip()]
    if not names:
        raise ConfigError("no class names: type at least one, one per line or comma-separated")
    check_page_limits(names)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"the class name {name!r} is given twice: give each class once")
        seen.add(name)
    return names


def parse_file_size(size: str | int) -> int:
    """Bytes from ``20MB``, ``500 KB``, ``1GB`` or a number of bytes (units of 1024, as gradio counts them)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value, unit = size, "B"
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?B)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise ConfigError(f"cannot read the file size {str(size)[:40]!r}: give a number of bytes or one such as "
                              "500KB, 20MB, 1GB")
        value, unit = int(match[1]), (match[2] or "B").upper()
    if value < 1:
        raise ConfigError(f"the maximum file size must be at least 1 byte, got {size!r}")
    return value * UNITS[unit]


class LRU:
    """A bounded least-recently-used store: reading an entry makes it the newest; past ``size`` entries, or past
    ``budget`` in total ``weigh``-t, the least recently used go first (an entry heavier than the whole budget is not
    kept). Not thread-safe: its owner holds a lock around it."""

    def __init__(self, size: int, budget: float = float("inf"), weigh: Callable[[Any], float] | None = None):
        if size < 1:
            raise ValueError(f"an LRU keeps at least one entry, got size={size}")
        self.size, self.budget, self._weigh = size, budget, weigh or (lambda value: 0)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._weight = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        """The keys, least recently used first."""
        return list(self._items)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The entry for ``key`` (now the most recently used), or ``default``."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: Any) -> Any:
        """Keep ``value`` as the most recently used entry, dropping the least recently used past the bounds."""
        if key in self._items:
            self._weight -= self._weigh(self._items.pop(key))
        weight = self._weigh(value)
        if weight > self.budget:
            return value
        self._items[key] = value
        self._weight += weight
        while len(self._items) > self.size or self._weight > self.budget:
            self._weight -= self._weigh(self._items.popitem(last=False)[1])
        return value

    def remember(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The entry for ``key``, made by ``make()`` and kept when missing."""
        if key in self._items:
            return self.get(key)
        return self.put(key, make())


def upload_path(payload: Any, folder: str | Path) -> Path:
    """The uploaded file an image input names: a file in gradio's upload ``folder`` and nowhere else (the payload
    comes from the visitor, and the page deletes what it reads)."""
    path = payload.get("path") if isinstance(payload, dict) else payload
    if not path:
        raise ConfigError("drop, paste or upload an image first")
    path = Path(str(path)).resolve()
    if not path.is_relative_to(Path(folder).resolve()):
        raise ConfigError("the image must be a file uploaded to this page: drop, paste or upload it")
    return path


@dataclass
class PageResult:
    """What the page shows for one image: per output, the top classes with their probabilities (``None`` where the
    output does not apply to the names given), the output ``ivit predict`` ranks by, and a line on the prompts."""

    bars: dict[str, dict[str, float] | None]
    ranked_by: str
    note: str

    @property
    def top(self) -> str:
        """The top class of the output ``ivit predict`` ranks by."""
        ranked = self.bars[self.ranked_by]
        return max(ranked, key=ranked.get)


class DemoModel:
    """A loaded classifier and what the page asks of it; one image at a time (a lock: a CoOp-style model's class
    names are part of its state, so two visitors must not interleave). Prompts for new class names are built in
    memory and kept in a bounded LRU; nothing is written to ``prompts.cache_dir``."""

    def __init__(self, classifier: Any, source: str = ""):
        self.classifier = classifier
        self.source = source
        self._lock = threading.Lock()
        self._prompts = LRU(PROMPT_SETS)  # new class names -> their ClassPrompts (built once)
        self._ranker: tuple[Any, LRU] | None = None  # zero-shot encoder, text features per class names
        self._uploads_lock = threading.Lock()
        self._images = LRU(IMAGES_KEPT, IMAGE_PIXELS_KEPT, weigh=lambda image: image.width * image.height)

    @classmethod
    def load(cls, run: str | Path, device: str = "auto", encoder: str | None = None,
             image_encoder: str | None = None) -> DemoModel:
        classifier = load_classifier(run, device, encoder=encoder, image_encoder=image_encoder)
        log.info(f"loaded {run}: {classifier.config.model.method}, {len(classifier.classes)} classes, "
                 f"{_prompt_kind(classifier)}, on {classifier.device}")
        return cls(classifier, str(run))

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    def _reads_names(self) -> bool:
        """A CoOp-style model: its head classifies by the class names' text, whatever they are."""
        return capabilities(self.classifier.model).reads_class_names

    def _class_prompts(self, names: list[str]) -> Any:
        if self._reads_names():  # re-encode every time: the model holds the last names it was given
            return self.classifier.class_prompts(names, cache=False)
        if names == self.classes:
            return self.classifier.class_prompts(None)
        return self._prompts.remember(tuple(names), lambda: self.classifier.class_prompts(names, cache=False))

    @property
    def select_k(self) -> int | None:
        """The run's ``prompts.select_k`` where this page can apply it (prompts, and a zero-shot ranker in a joint
        image-text space: the prototype ranker needs the training images, which a checkpoint does not carry)."""
        c = self.classifier
        p = c.config.prompts
        if not p.select_k or c.model.bank_prompts() is None or p.ranker != "zero_shot" or not joint_space(p.encoder):
            return None
        return p.select_k

    def _ranker_scores(self, image: Any, names: list[str]) -> Any:
        """``[1, N]``: the zero-shot ranker's cosine between the image and the text prompts of ``names`` (as
        ``ivit eval --select-k`` ranks)."""
        p = self.classifier.config.prompts
        if self._ranker is None:
            self.classifier.checkpoint.require_encoders("the zero-shot ranker of top-K+1 prompts")
            self._ranker = (load_encoder(p.encoder, device=str(self.classifier.device)), LRU(PROMPT_SETS))
        encoder, texts = self._ranker
        text = texts.remember(tuple(names), lambda: build_prompts(  # the run's ranker texts, descriptions included;
            names, encoder, "text", templates=p.templates, cache_dir=None, descriptions=p.descriptions,  # in memory
            device=str(self.classifier.device)).features["text"])
        pixels = encoder.image_transform()(image.convert("RGB")).unsqueeze(0).to(self.classifier.device)
        return cosine_scores(encoder.encode_images(pixels), text.to(self.classifier.device))

    def classify(self, image: Any, names: Sequence[str], select: bool = False) -> PageResult:
        """The top classes of ``image`` (a PIL image) among ``names`` through every output that scores them; with
        ``select`` (where :attr:`select_k` is set), each reads the image's top-K+1 prompts instead of all N."""
        names = [str(n) for n in names]
        check_page_limits(names)  # before the lock and before anything is encoded
        k = self.select_k if select else None
        if select and k is None:
            raise ConfigError("top-K+1 prompts need the run's prompts.select_k, prompts, and a zero-shot ranker in a "
                              "joint image-text space; this checkpoint has not all of them")
        with self._lock:
            use = self._class_prompts(names)
            batch = self.classifier.preprocess(image).unsqueeze(0)  # converted as ivit predict converts a file
            routes = ROUTES if use.route == "combined" else (use.route,)
            bars: dict[str, dict[str, float] | None] = dict.fromkeys(ROUTES)
            if k:
                with torch.no_grad():
                    ranking = self._ranker_scores(image, names)
                    out = forward_selected(self.classifier.model, batch.to(self.classifier.device), use.prompts,
                                           ranking, k)
            for route in routes:
                probs = route_probabilities(out.logits, out.scores, route) if k else \
                    self.classifier.probabilities(batch, replace(use, route=route))
                values, index = probs[0].topk(min(TOP, len(use.names)))
                bars[route] = {use.names[i]: float(p) for p, i in zip(values.tolist(), index.tolist())}
        return PageResult(bars, use.route, self._note(use, names, k))

    def answer(self, upload: str | Path, text: str, select: bool = False) -> PageResult:
        """What the page shows for the uploaded file ``upload`` and the class-names ``text``: the names are checked
        first (the upload stays for the next try), then the image is read (:meth:`read_upload`) and classified."""
        names = parse_class_names(text)
        return self.classify(self.read_upload(upload), names, select)

    def read_upload(self, upload: str | Path) -> Any:
        """The uploaded file as an RGB image, read by :func:`~instruction_vit.data.read_image` and then deleted
        (image or not): the decoded image is kept in memory (a bounded LRU keyed by the file, whose folder gradio
        names after its content) for the next request on the same upload."""
        path = Path(upload)
        with self._uploads_lock:
            image = self._images.get(str(path))
            if image is not None:  # read before; the same content uploaded again is deleted as well
                _delete_upload(path)
                return image
            if not path.is_file():
                raise DataError("the image is no longer on the server (uploads are deleted once read): drop, paste or "
                                "upload it again")
            try:
                image = read_image(path, self.classifier.min_side)  # reduced while decoding where it is large
            except DataError:  # its message may quote what the decoder read of the file
                raise DataError(f"the file {_shown_name(path)} is not an image this page can read (PNG, JPEG, WebP, "
                                "...; damaged, or too many pixels): upload an image") from None
            finally:
                _delete_upload(path)
            return self._images.put(str(path), image)

    def _note(self, use: Any, names: list[str], k: int | None = None) -> str:
        """Which prompts were read, from which encoder, which output ranks (as ``ivit predict``), and why the others
        are hidden."""
        c, n = self.classifier, len(names)
        if use.prompts is None and use.route == "head" and not self._reads_names():
            line = f"{n} classes; a plain model (no prompts): its head and the checkpoint's classes only"
        elif use.how == "the checkpoint's classes and prompts":
            line = f"{n} classes; the checkpoint's classes and its {_prompt_kind(c)}"
        else:
            line = f"{n} classes; {use.how}"
        line += f". Ranked by the {use.route} output, as `ivit predict`."
        if use.route == "score":
            line += (f" The head knows only the {len(self.classes)} training classes, so it (and the combined output) "
                     "is not shown for other class names.")
        p = c.config.prompts
        if k:
            rest = f", plus one averaged token for the other {n - k}" if k < n else " (all of them: K >= N)"
            line += (f" Top-{k}+1 prompts: each output reads the {min(k, n)} classes the zero-shot ranker ({p.encoder}) "
                     f"puts first{rest}, as `ivit eval --select-k {k}`; `ivit predict` reads all {n}.")
        elif p.select_k and use.prompts is not None:
            line += (f" All {n} prompts are read here, as `ivit predict` does; the run evaluates with top-"
                     f"{p.select_k}+1 prompts (`ivit eval --select-k {p.select_k}`).")
        return line


def _shown_name(path: Path) -> str:
    """The upload's file name as the visitor gave it, shortened, for a message."""
    name = path.name
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _delete_upload(path: Path) -> None:
    """Delete an uploaded file once read, and the folder gradio made for it (named after the file's sha256) when now
    empty."""
    path.unlink(missing_ok=True)
    if re.fullmatch(r"[0-9a-f]{64}", path.parent.name):
        try:
            path.parent.rmdir()
        except OSError:  # not empty (the same content under another name), or gone
            pass


def _prompt_kind(classifier: Any) -> str:
    p = classifier.config.prompts
    if classifier.model.bank_prompts() is None:
        return "no prompts" if not capabilities(classifier.model).reads_class_names else \
            f"{classifier.config.model.method} text prompts from {p.encoder}"
    kind = classifier.prompt_kind
    encoders = p.encoder if kind == "text" or not p.image_encoder or p.image_encoder == p.encoder else \
        f"{p.encoder} (text) and {p.image_encoder} (images)"
    return f"{kind} prompts from {encoders}"


def _gradio():
    """Gradio, imported when the page is built (an optional extra), with its analytics off."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as err:
        raise ConfigError("the demo page needs gradio: pip install 'gradio>=6.31,<7' (the app extra; in a checkout: "
                          "pip install -e '.[app]')") from err
    return gradio


def theme() -> Any:
    """Gradio's default look with the system's own fonts: nothing is fetched from a font server."""
    gr = _gradio()
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)


def _check_queue_size(queue_size: int) -> None:
    if not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError(f"the queue size must be a whole number of at least 1, got {queue_size!r}")


def build_page(demo: DemoModel, queue_size: int = QUEUE_SIZE) -> Any:
    """The page (a :class:`gradio.Blocks`): image and class names in, top-5 bars per output and a prompts line out.
    Its queue runs :data:`CONCURRENCY` request at a time and holds at most ``queue_size`` more; gradio's temporary
    files are swept (:data:`SWEEP`)."""
    gr = _gradio()
    from gradio.utils import get_upload_folder

    _check_queue_size(queue_size)

    def classify(image, text, select=False):
        """The click: ``image`` is gradio's file payload, unprocessed (the page reads the file itself)."""
        try:
            result = demo.answer(upload_path(image, get_upload_folder()), text, bool(select))
        except UserError as err:  # the visitor's mistake: a message on the page, one line here, no traceback
            log.info(f"refused a request: {err}")
            raise gr.Error(str(err), print_exception=False) from None
        labels = [gr.Label(value=result.bars[r], visible=result.bars[r] is not None,
                           label=TITLES[r] + (" · ranks the classes" if r == result.ranked_by else ""))
                  for r in ROUTES]
        return [*labels, result.note]

    c = demo.classifier
    with gr.Blocks(title="Instruction-ViT demo", analytics_enabled=False, delete_cache=SWEEP) as page:
        gr.Markdown(f"## Instruction-ViT: {Path(demo.source).name or demo.source}\n"
                    f"{c.config.model.method} on `{c.config.model.backbone}`, {len(demo.classes)} training classes, "
                    f"{_prompt_kind(c)}. Edit the class names to try new ones.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 label="image (drop, paste or upload)", elem_id="ivit-image", height=280)
                names = gr.Textbox("\n".join(demo.classes), lines=min(max(len(demo.classes), 3), 10), max_lines=30,
                                   label="class names (one per line or comma-separated; any new names)",
                                   elem_id="ivit-classes")
                k = demo.select_k
                select = gr.Checkbox(False, label=f"top-{k}+1 prompts per image (the run's prompts.select_k; "
                                     f"ivit predict reads all)", visible=k is not None, elem_id="ivit-select")
                button = gr.Button("Classify", variant="primary", elem_id="ivit-classify")
            with gr.Column():
                outputs = [gr.Label(num_top_classes=TOP, label=TITLES[r], elem_id=f"ivit-{r}") for r in ROUTES]
                note = gr.Markdown(elem_id="ivit-note")
        # preprocess=False: gradio hands over the upload's path without opening it (no decoding by PIL of its own)
        button.click(classify, [image, names, select], [*outputs, note], api_name="classify", preprocess=False,
                     concurrency_limit=CONCURRENCY)
    return page.queue(max_size=queue_size, default_concurrency_limit=CONCURRENCY)


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          on_ready=None, block: bool = True, *, max_file_size: str | int = MAX_FILE_SIZE,
          queue_size: int = QUEUE_SIZE, encoder: str | None = None, image_encoder: str | None = None) -> Any:
    """Serve the page for ``run`` at ``http://host:port/``: no share link, offline. ``on_ready(url)`` is called once
    it answers; with ``block`` this returns only when stopped (Ctrl-C), else it returns the running page. Uploads
    over ``max_file_size`` (``20MB``, ``500KB``, or bytes) are refused; at most ``queue_size`` requests wait."""
    limit = parse_file_size(max_file_size)  # before the model loads: a typo costs nothing
    _check_queue_size(queue_size)
    demo = DemoModel.load(run, device, encoder, image_encoder)
    page = build_page(demo, queue_size)
    try:  # show_error=False: only the page's own messages (gr.Error) reach a visitor, never a bug's text
        page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                    show_error=False, footer_links=[], ssr_mode=False, pwa=False, mcp_server=False,
                    enable_monitoring=False, theme=theme(), css=CSS, max_file_size=limit)
    except OSError:  # gradio: "Cannot find empty port in range"
        raise ConfigError(f"cannot serve on {host}:{port}: the port is in use or not allowed; pick another with "
                          "--port") from None
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/")
    if block:
        try:
            page.block_thread()
        finally:
            page.close()
    return page
