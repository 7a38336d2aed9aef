"""Sentence templates for text prompts: ``"a photo of a {}."`` with ``{}`` the class name.

The paper uses "30 templates in the same way as OpenCLIP" but no public list has exactly 30, so the set
is a choice recorded with every prompt bank. Named sets:

* ``openai_imagenet``: OpenAI's 80 ImageNet templates (as shipped by open_clip);
* ``simple``: open_clip's 7 "simple" ImageNet templates;
* ``photo``: the single ``"a photo of a {}."``;
* ``coop:DATASET``: CoOp's per-dataset template (``caltech101``, ``oxford_pets``, ``stanford_cars``,
  ``oxford_flowers``, ``fashion_mnist``).

Anything else is read as a file path: one template per line, blank lines and ``#`` comments ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

COOP_TEMPLATES = {
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fashion_mnist": "a photo of a {}, a type of clothing.",
}

TEMPLATE_SET_NAMES = ("openai_imagenet", "simple", "photo", *(f"coop:{k}" for k in COOP_TEMPLATES))


def _open_clip_set(attr: str) -> list[str]:
    from open_clip import zero_shot_metadata

    return [t("{}") for t in getattr(zero_shot_metadata, attr)]


def template_set(name_or_path: str) -> list[str]:
    """The templates of a named set (see module doc) or of a template file."""
    if name_or_path == "openai_imagenet":
        return _open_clip_set("OPENAI_IMAGENET_TEMPLATES")
    if name_or_path == "simple":
        return _open_clip_set("SIMPLE_IMAGENET_TEMPLATES")
    if name_or_path == "photo":
        return ["a photo of a {}."]
    if name_or_path.startswith("coop:"):
        dataset = name_or_path.removeprefix("coop:")
        if dataset not in COOP_TEMPLATES:
            raise ValueError(f"no CoOp template for {dataset!r}; known: {', '.join(COOP_TEMPLATES)}")
        return [COOP_TEMPLATES[dataset]]
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"unknown template set {name_or_path!r}: not one of {', '.join(TEMPLATE_SET_NAMES)} "
            "and no such file (a template file holds one template per line, with {} for the class name)"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return check_templates([line for line in lines if line and not line.startswith("#")], source=str(path))


def check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    """Each template must hold exactly one ``{}``; returns them as a list."""
    templates = list(templates)
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise ValueError(f"{source}: template {t!r} must contain exactly one '{{}}' for the class name")
    return templates
