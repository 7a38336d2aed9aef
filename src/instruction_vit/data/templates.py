"""Sentence templates for text prompts: ``"a photo of a {}."`` with ``{}`` the class name.

The paper uses "30 templates in the same way as OpenCLIP" but no public list has exactly 30, so the set
is a choice recorded with every prompt bank. Named sets:

* ``openai_imagenet``: OpenAI's 80 ImageNet templates (as shipped by open_clip);
* ``simple``: open_clip's 7 "simple" ImageNet templates;
* ``photo``: the single ``"a photo of a {}."``;
* ``coop:DATASET``: CoOp's per-dataset template, the ``coop_template`` of a registered data set
  (``caltech101``, ``oxford_pets``, ``stanford_cars``, ``oxford_flowers``, ``fashion_mnist``, ...).

Anything else is read as a file path: one template per line, blank lines and ``#`` comments ignored.

A class name fills a template as :func:`class_text` writes it: underscores become spaces ("ankle_boot" reads "a
photo of a ankle boot."), as CoOp does; the name itself (shown in predictions, results and model folders) stays as
given. Every text built from a class name (prompt banks, the CLIP prompt learners) goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .sets import DATASETS, dataset

FIXED_SETS = ("openai_imagenet", "simple", "photo")


def template_set_names() -> list[str]:
    """The named sets: the fixed ones, then ``coop:NAME`` for every registered data set with a CoOp template."""
    coop = [f"coop:{name}" for name in DATASETS.names() if dataset(name).coop_template is not None]
    return [*FIXED_SETS, *coop]


def _open_clip_set(attr: str) -> list[str]:
    from open_clip import zero_shot_metadata

    return [t("{}") for t in getattr(zero_shot_metadata, attr)]


def template_set(name_or_path: str | Sequence[str]) -> list[str]:
    """The templates of a named set (see module doc) or of a template file; a list of templates is checked and
    returned as it is."""
    if not isinstance(name_or_path, str):
        return check_templates(name_or_path)
    if name_or_path == "openai_imagenet":
        return _open_clip_set("OPENAI_IMAGENET_TEMPLATES")
    if name_or_path == "simple":
        return _open_clip_set("SIMPLE_IMAGENET_TEMPLATES")
    if name_or_path == "photo":
        return ["a photo of a {}."]
    if name_or_path.startswith("coop:"):
        name = name_or_path.removeprefix("coop:")
        template = dataset(name).coop_template if name in DATASETS else None
        if template is None:
            known = ", ".join(n.removeprefix("coop:") for n in template_set_names() if n.startswith("coop:"))
            raise ConfigError(f"no CoOp template for {name!r}; known: {known}")
        return check_templates([template], source=name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"unknown template set {name_or_path!r}: not one of {', '.join(template_set_names())} "
            "and no such file (a template file holds one template per line, with {} for the class name)"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return check_templates([line for line in lines if line and not line.startswith("#")], source=str(path))


def class_text(name: str) -> str:
    """The words a class name stands for in a prompt text: underscores become spaces (folder names such as
    ``ankle_boot``), as CoOp's prompt learner does (``classname.replace("_", " ")``). Only texts change: the class
    name shown stays as given."""
    return name.replace("_", " ")


def check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    """Each template must hold exactly one ``{}``; returns them as a list."""
    templates = list(templates)
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise ConfigError(f"{source}: template {t!r} must contain exactly one '{{}}' for the class name")
    return templates
