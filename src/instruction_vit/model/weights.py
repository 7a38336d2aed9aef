"""One verified loading path for backbone weights: every tensor of the backbone comes from the source, or the
run stops with a :class:`~instruction_vit.errors.WeightsError` (never a silent random init).

Sources: timm's own (``pretrained=True``: hub, url or cache, fetched by timm), a ``.safetensors`` file, a
``torch.save`` file (``.pth``/``.pt``/``.bin``, possibly wrapped as ``{"model": ...}``, ``{"teacher": ...}``, ...),
a JAX ``.npz`` (read by the model's own ``load_pretrained``), or a state dict in memory. Prefixes such as
``module.`` or ``backbone.`` are stripped when that makes the keys match, timm's checkpoint filter of the
architecture adapts the rest (position embeddings, patch embeddings), and only the classifier head may stay new.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file
from timm.models import load_pretrained
from timm.models._manipulate import adapt_input_conv
from torch import Tensor, nn

from ..errors import MissingFileError, WeightsError, WeightsUnavailableError
from ..files import file_sha256
from ..state_dicts import torch_load

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
PREFIXES = ("module.", "model.", "encoder.", "backbone.")
WRAPPER_KEYS = ("model", "state_dict", "module", "teacher", "student")
FILTER_NAMES = ("checkpoint_filter_fn", "_filter_fn")
OPTIONAL = (".num_batches_tracked",)  # a step counter, not a weight; torch sets it when a checkpoint lacks it

#: ``False``/``None``: random init; ``True``: timm's own sources (needs network or a warm cache);
#: a path: a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict or a JAX ``.npz``;
#: a mapping: the backbone's state dict itself.
Pretrained = Union[bool, str, Path, Mapping[str, Tensor], None]


@dataclasses.dataclass(frozen=True)
class WeightsReport:
    """What was loaded into a backbone, and from where (``to_dict()`` goes to results.json)."""

    source: str
    format: str
    loaded: int
    total: int
    sha256: str | None = None
    stripped_prefix: str | None = None
    new: tuple[str, ...] = ()
    ignored: int = 0

    def summary(self) -> str:
        """One line: ``loaded 150/150 backbone tensors from FILE (sha256 abcd1234…, new head: head.weight, ...)``."""
        notes = []
        if self.sha256:
            notes.append(f"sha256 {self.sha256[:8]}…")
        if self.stripped_prefix:
            notes.append(f"prefix {self.stripped_prefix!r} stripped")
        if self.ignored:
            notes.append(f"{self.ignored} other tensors ignored")
        if self.new:
            notes.append(f"new head: {', '.join(self.new)}")
        tail = f" ({', '.join(notes)})" if notes else ""
        return f"loaded {self.loaded}/{self.total} backbone tensors from {self.source}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "new": list(self.new)}


def resolve_source(pretrained: Pretrained) -> bool | Path | Mapping[str, Any]:
    """``pretrained`` checked before any model is built: ``False`` (random init), ``True`` (timm), a file, a mapping."""
    if pretrained is None or pretrained is False:
        return False
    if pretrained is True or isinstance(pretrained, Mapping):
        return pretrained
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"pretrained weights file not found: {path}; give an existing .safetensors/.pth/.bin/.npz file "
            "(model.pretrained=FILE, or weights.BACKBONE=FILE for ivit reproduce), model.pretrained=timm for timm's "
            "own sources, or model.pretrained=null for random init (in Python: pretrained=True / False)"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"cannot read weights from {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    return path


def load_weights(net: nn.Module, pretrained: Pretrained, name: str | None = None) -> WeightsReport | None:
    """Load ``pretrained`` into the timm model ``net`` and verify that every backbone tensor came from it.

    Returns ``None`` for random init. Raises :class:`WeightsError` (one line) when the weights do not fit; the
    model is then unusable (a JAX ``.npz`` may have been half written).
    """
    source = resolve_source(pretrained)
    name = name or _architecture(net)
    if source is False:
        return None
    if source is True:
        return _load_from_timm(net, name)
    if isinstance(source, Mapping):
        return _load_state(net, source, name, "state dict", "state_dict")
    digest = file_sha256(source)
    if source.suffix == ".npz":
        if not callable(getattr(net, "load_pretrained", None)):
            raise WeightsError(f"{source}: JAX .npz weights load only into timm models with a JAX reader "
                               f"(ViT, ResNetV2), not {name}; give a .safetensors or .pth state dict")
        return _load_in_place(net, lambda: net.load_pretrained(str(source)), name, str(source), "npz", digest)
    fmt = "safetensors" if source.suffix == ".safetensors" else "pth"
    return _load_state(net, _read(source), name, str(source), fmt, digest)


def _architecture(net: nn.Module) -> str:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(net).__name__


def _read(path: Path) -> Mapping[str, Any]:
    """The raw contents of a state-dict file (tensors memory-mapped where the format allows)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors_rust.SafetensorError is not exported as a stable class
            raise WeightsError(f"{path}: cannot read it as .safetensors ({_first_line(err)})") from err
    return torch_load(path)


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    text = text.splitlines()[0] if text else ""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensors of a state dict, looking inside wrappers such as ``{"model": ...}`` or ``{"teacher": ...}``."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"{source}: holds no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return tensors


def _strip_prefix(state: dict[str, Tensor], wanted: set[str]) -> tuple[dict[str, Tensor], str, int]:
    """The state under the prefix chain (e.g. ``module.backbone.``) that matches most keys of the model.

    Keys without the chosen prefix belong to other parts of the checkpoint (DINO's projection head, ...) and are
    dropped; returns the state, the prefix ('' when none helps) and how many keys were dropped.
    """
    def matches(prefix: str) -> int:
        return sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in wanted)

    best = max(sorted(_prefix_chains(state), key=len), key=matches, default="")
    if not best or matches(best) <= matches(""):
        return state, "", 0
    stripped = {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    return stripped, best, len(state) - len(stripped)


def _prefix_chains(keys: Mapping[str, Any]) -> set[str]:
    chains = set()
    for key in keys:
        chain = ""
        while (step := next((p for p in PREFIXES if key.startswith(chain + p)), None)) is not None:
            chain += step
            chains.add(chain)
    return chains


def _filter(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], str]:
    """timm's checkpoint filter of the model's architecture (found in its module, as timm registers it)."""
    module = sys.modules.get(type(net).__module__)
    fn = next((getattr(module, n) for n in FILTER_NAMES if callable(getattr(module, n, None))), None)
    if fn is None:
        return state, ""
    try:
        takes_model = len(inspect.signature(fn).parameters) > 1
        return dict(fn(state, net) if takes_model else fn(state)), ""
    except Exception as err:  # a filter meeting weights of another architecture fails in arbitrary ways
        return state, f"timm's checkpoint filter failed: {_first_line(err, 80)}"


def _adapt_input_convs(state: dict[str, Tensor], net: nn.Module, model: Mapping[str, Tensor]) -> None:
    """Convert the first conv to the model's input channels (``in_chans``), as timm does."""
    names = (getattr(net, "pretrained_cfg", None) or {}).get("first_conv") or ()
    for conv in (names,) if isinstance(names, str) else names:
        key = f"{conv}.weight"
        have, want = state.get(key), model.get(key)
        if have is None or want is None or have.ndim != 4 or have.shape == want.shape:
            continue
        if have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:]:
            try:
                state[key] = adapt_input_conv(want.shape[1], have, base_chans=have.shape[1])
            except NotImplementedError:
                continue  # left as it is: reported as a tensor of another shape


def _classifier_names(net: nn.Module) -> tuple[str, ...]:
    names = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = {names} if isinstance(names, str) else set(names)
    get = getattr(net, "get_classifier", None)
    if callable(get):
        head = get()
        names |= {n for n, m in net.named_modules() if m is head and n}
    return tuple(sorted(names))


def _is_head(key: str, heads: tuple[str, ...]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in heads)


def _drop_unfit_heads(state: dict[str, Tensor], model: Mapping[str, Tensor], heads: tuple[str, ...]) -> None:
    """Drop every classifier whose tensors are absent from the model or of another shape (a new head)."""
    for head in heads:
        keys = [k for k in state if _is_head(k, (head,))]
        if any(k not in model or model[k].shape != state[k].shape for k in keys):
            for k in keys:
                del state[k]


def _load_state(net: nn.Module, raw: Any, name: str, source: str, fmt: str,
                sha256: str | None = None) -> WeightsReport:
    """Load a state dict (after unwrapping, prefix stripping and timm's filter) and check it covers the backbone."""
    model = net.state_dict()
    state, prefix, ignored = _strip_prefix(_unwrap(raw, source), set(model))
    state, filter_note = _filter(state, net)
    _adapt_input_convs(state, net, model)
    heads = _classifier_names(net)
    _drop_unfit_heads(state, model, heads)
    new = tuple(k for k in model if k not in state and _is_head(k, heads))
    missing = [k for k in model if k not in state and k not in new and not k.endswith(OPTIONAL)]
    buffers = {n for n, _ in net.named_buffers()}  # non-persistent ones: in old checkpoints, harmless
    unexpected = [k for k in state if k not in model and k not in buffers]
    mismatched = [k for k in model if k in state and state[k].shape != model[k].shape]
    if missing or unexpected or mismatched:
        matched = sum(1 for k in model if k in state and state[k].shape == model[k].shape)
        raise WeightsError(_misfit(source, name, matched, missing, unexpected,
                                   [f"{k} {list(state[k].shape)} vs {list(model[k].shape)}" for k in mismatched],
                                   filter_note))
    net.load_state_dict(state, strict=False)
    loaded = sum(1 for k in state if k in model)
    return WeightsReport(source, fmt, loaded, loaded, sha256, prefix or None, new, ignored)


def _load_in_place(net: nn.Module, load: Callable[[], Any], name: str, source: str, fmt: str,
                   sha256: str | None = None) -> WeightsReport:
    """Run a loader that writes into ``net`` itself (timm's JAX ``.npz`` reader) and check what it wrote.

    Every float tensor is set to NaN first, so a tensor the loader leaves alone is seen even when its pretrained
    value equals its init; classifier tensors left alone get their init back (a new head).
    """
    model = net.state_dict()
    heads = _classifier_names(net)
    init = {k: v.clone() for k, v in model.items() if _is_head(k, heads)}
    checked = [k for k, v in model.items() if v.is_floating_point()]
    with torch.no_grad():
        for k in checked:
            model[k].fill_(float("nan"))
        try:
            load()
        except (KeyError, ValueError, RuntimeError, OSError) as err:
            raise WeightsError(f"{source}: cannot load it into {name} ({_first_line(err)}); "
                               f"{_advice(name)}") from err
        after = net.state_dict()
        untouched = [k for k in checked if after[k].isnan().any()]
        new = tuple(k for k in untouched if k in init)
        for k in new:
            after[k].copy_(init[k])
    missing = [k for k in untouched if k not in new]
    if missing:
        matched = len(checked) - len(untouched)
        raise WeightsError(_misfit(source, name, matched, missing, [], [], ""))
    total = len(checked) - len(new)
    return WeightsReport(source, fmt, total, total, sha256, None, new)


def _misfit(source: str, name: str, matched: int, missing: list[str], unexpected: list[str],
            mismatched: list[str], note: str) -> str:
    parts = [f"{matched} matched"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
        if keys:
            more = ", …" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])}{more})")
    note = f"; {note}" if note else ""
    return f"{source}: weights do not fit {name}: {', '.join(parts)}{note}; {_advice(name)}"


def _advice(name: str) -> str:
    return (f"is this a weights file for {name}? give the weights of that architecture, "
            "or model.pretrained=null for random init")


class _Fetched(Exception):
    """Carries what timm fetched (a state dict, or the path of a custom-format file) out of its loader."""

    def __init__(self, item: Any):
        super().__init__("fetched")
        self.item = item


def _load_from_timm(net: nn.Module, name: str) -> WeightsReport:
    """timm's own weights, fetched by timm (hub, url, cache) and loaded through the same checks as a file."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture") or name, cfg.get("tag")
    source = f"timm:{arch}.{tag}" if tag else f"timm:{arch}"
    item = _fetch_from_timm(net, name)
    if isinstance(item, Mapping):
        return _load_state(net, item, name, source, "timm")
    return _load_in_place(net, lambda: net.load_pretrained(item), name, source, "timm")


def _fetch_from_timm(net: nn.Module, name: str) -> Mapping[str, Any] | str:
    """Let ``timm.models.load_pretrained`` resolve and download the weights, and stop it before it loads them."""
    def got_state(state_dict, model=None):
        raise _Fetched(state_dict)

    def got_file(path, prefix=""):
        raise _Fetched(str(path))

    net.load_pretrained = got_file  # timm calls model.load_pretrained(path) for custom formats (JAX .npz)
    try:
        load_pretrained(net, filter_fn=got_state)
    except _Fetched as fetched:
        return fetched.item
    except OSError as err:  # hub unreachable, nothing cached (huggingface_hub / urllib errors)
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights for {name!r} from timm's sources ({type(err).__name__}); "
            "offline, download them elsewhere and pass pretrained=/path/to/weights.safetensors"
        ) from err
    finally:
        del net.load_pretrained
    raise WeightsError(f"timm loaded weights for {name} by a path that cannot be verified; "
                       "download them and pass the file as pretrained=")
