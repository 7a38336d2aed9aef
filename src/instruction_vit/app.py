"""The demo page (``ivit serve RUN``): drop an image, edit the class names, see the top-5 of each output.

A Gradio page over :func:`instruction_vit.api.load_classifier`. What it shows is what ``ivit predict`` computes:
the same prompts (:meth:`Classifier.class_prompts`) and the same probabilities (:meth:`Classifier.probabilities`),
and the output ``ivit predict`` ranks by is marked. The checkpoint's own classes show every output the model has
(combined, head, score); other class names show only the outputs that score the names given: the head knows only
the training classes, so it is hidden for Instruction-ViT (a CoOp-style head reads the class names and stays).

Gradio is an optional extra (``pip install 'instruction-vit[app]'``), imported only when the page is built. The page
works offline: no share link, no analytics, system fonts, nothing fetched from the Hugging Face Hub.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .api import build_prompts, load_classifier, load_encoder
from .errors import ConfigError, UserError
from .prompts.encoders import joint_space
from .prompts.selection import cosine_scores, forward_selected

log = logging.getLogger(__name__)

#: The outputs a model may have, in the order the page shows them.
ROUTES = ("combined", "head", "score")
TITLES = {"combined": "combined (head + score)", "head": "head", "score": "score (prompts)"}
TOP = 5
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
#: Small images (a 28-px Fashion-MNIST item) shown large, pixels kept sharp.
CSS = "#ivit-image img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}"
SYSTEM_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]


def parse_class_names(text: str) -> list[str]:
    """Class names typed one per line or comma-separated (blank entries dropped); two equal names are an error, since
    their bars could not be told apart."""
    names = [n.strip() for n in re.split(r"[\n,]", text or "") if n.strip()]
    if not names:
        raise ConfigError("no class names: type at least one, one per line or comma-separated")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"the class name {name!r} is given twice: give each class once")
        seen.add(name)
    return names


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
    names are part of its state, so two visitors must not interleave)."""

    def __init__(self, classifier: Any, source: str = ""):
        self.classifier = classifier
        self.source = source
        self._lock = threading.Lock()
        self._prompts: dict[tuple[str, ...], Any] = {}  # new class names -> their ClassPrompts (built once)
        self._ranker: tuple[Any, dict[tuple[str, ...], Any]] | None = None  # zero-shot encoder, text features per names

    @classmethod
    def load(cls, run: str | Path, device: str = "auto") -> DemoModel:
        classifier = load_classifier(run, device)
        log.info(f"loaded {run}: {classifier.config.model.method}, {len(classifier.classes)} classes, "
                 f"{_prompt_kind(classifier)}, on {classifier.device}")
        return cls(classifier, str(run))

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    def _reads_names(self) -> bool:
        """A CoOp-style model: its head classifies by the class names' text, whatever they are."""
        return callable(getattr(self.classifier.model, "set_classes", None))

    def _class_prompts(self, names: list[str]) -> Any:
        if self._reads_names():  # re-encode every time: the model holds the last names it was given
            return self.classifier.class_prompts(names)
        if names == self.classes:
            return self.classifier.class_prompts(None)
        return _remember(self._prompts, tuple(names), lambda: self.classifier.class_prompts(names))

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
            self._ranker = (load_encoder(p.encoder, device=str(self.classifier.device)), {})
        encoder, texts = self._ranker
        text = _remember(texts, tuple(names), lambda: build_prompts(
            names, p.encoder, "text", templates=p.templates, cache_dir=p.cache_dir, descriptions=p.descriptions,
            device=str(self.classifier.device)).features["text"])  # the run's ranker texts, descriptions included
        pixels = encoder.image_transform()(image.convert("RGB")).unsqueeze(0).to(self.classifier.device)
        return cosine_scores(encoder.encode_images(pixels), text.to(self.classifier.device))

    def classify(self, image: Any, names: Sequence[str], select: bool = False) -> PageResult:
        """The top classes of ``image`` (a PIL image) among ``names`` through every output that scores them; with
        ``select`` (where :attr:`select_k` is set), each reads the image's top-K+1 prompts instead of all N."""
        names = [str(n) for n in names]
        k = self.select_k if select else None
        if select and k is None:
            raise ConfigError("top-K+1 prompts need the run's prompts.select_k, prompts, and a zero-shot ranker in a "
                              "joint image-text space; this checkpoint has not all of them")
        with self._lock:
            use = self._class_prompts(names)
            batch = self.classifier.transform(image.convert("RGB")).unsqueeze(0)
            routes = ROUTES if use.route == "combined" else (use.route,)
            bars: dict[str, dict[str, float] | None] = dict.fromkeys(ROUTES)
            if k:
                with torch.no_grad():
                    ranking = self._ranker_scores(image, names)
                    out = forward_selected(self.classifier.model, batch.to(self.classifier.device), use.prompts,
                                           ranking, k)
            for route in routes:
                probs = _route_probabilities(out, route) if k else \
                    self.classifier.probabilities(batch, replace(use, route=route))
                values, index = probs[0].topk(min(TOP, len(use.names)))
                bars[route] = {use.names[i]: float(p) for p, i in zip(values.tolist(), index.tolist())}
        return PageResult(bars, use.route, self._note(use, names, k))

    def _note(self, use: Any, names: list[str], k: int | None = None) -> str:
        """Which prompts were read, from which encoder, which output ranks (as ``ivit predict``), and why the others
        are hidden."""
        c, n = self.classifier, len(names)
        if use.prompts is None and use.route == "head" and not self._reads_names():
            line = f"{n} classes; a plain classifier (no prompts): its head and the checkpoint's classes only"
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


def _remember(cache: dict, key: Any, make: Any, size: int = 16) -> Any:
    """``cache[key]``, made once; the oldest entry goes when ``size`` are kept (a page open to many visitors)."""
    if key not in cache:
        if len(cache) >= size:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def _route_probabilities(out: Any, route: str) -> Any:
    """``[B, N]`` probabilities of one output of a model's forward (as :meth:`Classifier.probabilities`)."""
    if route == "score":
        return out.scores.float().softmax(-1)
    if route == "combined":
        return (out.logits.float().softmax(-1) + out.scores.float().softmax(-1)) / 2
    return out.logits.float().softmax(-1)


def _prompt_kind(classifier: Any) -> str:
    p = classifier.config.prompts
    if classifier.model.bank_prompts() is None:
        return "no prompts" if not callable(getattr(classifier.model, "set_classes", None)) else \
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
        raise ConfigError("the demo page needs gradio: pip install 'instruction-vit[app]'") from err
    return gradio


def theme() -> Any:
    """Gradio's default look with the system's own fonts: nothing is fetched from a font server."""
    gr = _gradio()
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)


def build_page(demo: DemoModel) -> Any:
    """The page (a :class:`gradio.Blocks`): image and class names in, top-5 bars per output and a prompts line out."""
    gr = _gradio()

    def run(image, text, select=False):
        if image is None:
            raise gr.Error("drop, paste or upload an image first")
        try:
            result = demo.classify(image, parse_class_names(text), bool(select))
        except UserError as err:
            raise gr.Error(str(err)) from None
        labels = [gr.Label(value=result.bars[r], visible=result.bars[r] is not None,
                           label=TITLES[r] + (" · ranks the classes" if r == result.ranked_by else ""))
                  for r in ROUTES]
        return [*labels, result.note]

    c = demo.classifier
    with gr.Blocks(title="Instruction-ViT demo", analytics_enabled=False) as page:
        gr.Markdown(f"## Instruction-ViT: {Path(demo.source).name or demo.source}\n"
                    f"{c.config.model.method} on `{c.config.model.backbone}`, {len(demo.classes)} training classes, "
                    f"{_prompt_kind(c)}. Edit the class names to try new ones.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", sources=["upload", "clipboard"], label="image (drop, paste or upload)",
                                 elem_id="ivit-image", height=280)
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
        button.click(run, [image, names, select], [*outputs, note])
    return page


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          on_ready=None, block: bool = True) -> Any:
    """Serve the page for ``run`` at ``http://host:port/``: no share link, offline. ``on_ready(url)`` is called once
    it answers; with ``block`` this returns only when stopped (Ctrl-C), else it returns the running page."""
    demo = DemoModel.load(run, device)
    page = build_page(demo)
    try:
        page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                    show_error=True, footer_links=[], ssr_mode=False, pwa=False, mcp_server=False,
                    enable_monitoring=False, theme=theme(), css=CSS)
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
