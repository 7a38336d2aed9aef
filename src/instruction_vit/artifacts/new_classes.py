"""The one policy for class names a model was not trained on, used by ``ivit predict``, the transfer protocols, the
demo page and export alike.

Each kind of model takes new class names by its own route, read from what it declares
(:class:`~instruction_vit.outputs.Capabilities`), never probed:

* a model whose classifier is the class names' text (a CLIP prompt learner, ``reads_class_names``) is given the
  names (``set_classes``); its head ranks them;
* a model that reads instruction prompts (Instruction-ViT, ``reads_prompts`` with stored prompts) reads prompts
  built for the names (by the caller: text from the names, image prompts from example images); its score head
  ranks them;
* a plain classifier (a head fixed to its training classes) cannot: :class:`FixedClassesError` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..outputs import Prompts, capabilities


class FixedClassesError(ConfigError):
    """A model that cannot classify new class names (a plain classifier: no prompts, a head fixed to its classes)."""


@dataclass
class ClassPrompts:
    """What a prediction reads: class names, their prompts (``None``: the model's own, or none), how they were made,
    and the route that ranks the classes (``combined``: head + score, ``head`` or ``score``)."""

    names: list[str]
    prompts: Prompts | None
    how: str
    route: str


def check_class_names(classes: Sequence[str]) -> list[str]:
    """New class names as given: a non-empty list of distinct, non-blank names (a string is one name too many
    ways to read: give a list)."""
    if isinstance(classes, str):
        raise ConfigError(f"classes must be a list of names, not the string {classes[:40]!r}: write "
                          "classes=[\"cat\", \"dog\"]")
    names = [str(c) for c in classes]
    if not names:
        raise ConfigError("no class names given: give at least one (or None for the checkpoint's own classes)")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ConfigError(f"class name {blank[0] + 1} of {len(names)} is empty: give each class a name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"the class name {repeated[0]!r} is given twice: give each class once")
    return names


def prepare_own_classes(model: nn.Module, names: Sequence[str],
                        how: str = "the checkpoint's classes and prompts") -> ClassPrompts:
    """The model on the classes it was trained for (a model that reads class names is given its own back, after any
    new ones): every output it has ranks them together."""
    if capabilities(model).reads_class_names:
        model.set_classes(list(names))
    prompts = model.bank_prompts()
    return ClassPrompts(list(names), prompts, how, "combined" if prompts is not None else "head")


def prepare_new_classes(model: nn.Module, method: str, names: Sequence[str],
                        prompts_for: Callable[[], tuple[Prompts, str]], fixed: str = "this checkpoint") -> ClassPrompts:
    """The model made ready to classify among ``names`` by its own route (module docstring). ``prompts_for()`` builds
    the prompts for the names and says in a phrase how (called only for a model that reads prompts); ``fixed``
    names the model in the refusal of a plain classifier."""
    names = check_class_names(names)
    if capabilities(model).reads_class_names:
        model.set_classes(names)
        return ClassPrompts(names, None, f"{method}: its learned prompts with each new class name", "head")
    if model.bank_prompts() is None:
        raise FixedClassesError(f"{fixed} is a plain classifier (no prompts, a head fixed to its training classes): "
                                "it cannot classify new class names; train with prompts.kind=text, image or mixed "
                                "(Instruction-ViT) or a CLIP prompt learner")
    prompts, how = prompts_for()
    return ClassPrompts(names, prompts, how, "score")


def reads_new_classes(model: nn.Module) -> bool:
    """Whether ``model`` can classify class names it was not trained on (by either route)."""
    return capabilities(model).reads_class_names or model.bank_prompts() is not None


__all__ = ["ClassPrompts", "FixedClassesError", "check_class_names", "prepare_new_classes", "prepare_own_classes",
           "reads_new_classes"]
