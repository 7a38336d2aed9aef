"""What a model folder's ``config.json`` may carry, both ways: a folder comes from people you do not know.

Writing (``ivit save``): the config is made portable. Templates and descriptions read from files are written inline
(the folder carries them), and every path in it is cut to its last part: a site key (where the data, caches and
starting weights were) is written relative and ignored when the folder is read, and no saver's absolute path is
published.

Reading (:func:`trusted_config`): only what rebuilds the model is taken. Site keys (:data:`SITE_KEYS`) are reset to
the reader's defaults, whatever the file says; templates or descriptions named by a file are refused (a folder
carries them inline); a prompt encoder named by a file or folder on the saver's machine is not followed: the caller
names the encoder (``--encoder``), checked later against the weights id the folder records. Nothing here reads a path
the file names.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from ..config import Config
from ..data import template_set_names
from ..errors import CheckpointError

#: Keys that say where things are on one machine, or how it runs there: never taken from a model folder.
SITE_KEYS = ("data.root", "data.split_file", "data.store_dir", "data.num_workers", "prompts.cache_dir",
             "prompts.bank_file", "model.pretrained", "train.device", "data.max_image_pixels")
#: Keys naming a prompt encoder (which may be a file or folder on the saver's machine).
ENCODER_KEYS = ("prompts.encoder", "prompts.image_encoder")
#: Keys naming templates or descriptions (a named set, or a file the folder carries inline).
TEXT_KEYS = ("prompts.templates", "prompts.descriptions", "model.options.templates")

# The tokens of a string in which a path is looked for (a path ends at a space, quote, comma or bracket).
_TOKEN = re.compile(r"[^\s,;'\"()\[\]{}=]+")


# -- writing ---------------------------------------------------------------------------------------------------
def portable_config(config: Mapping[str, Any], templates: list[str] | None, descriptions: Any,
                    option_templates: list[str] | None = None) -> dict[str, Any]:
    """The resolved run config as a model folder writes it: the templates and descriptions that were files,
    inline (``templates``, ``descriptions``, ``option_templates``: their content, read by the caller), and every path
    cut to its last part."""
    out = copy.deepcopy(dict(config))
    prompts = out.get("prompts", {})
    if isinstance(prompts.get("templates"), str) and not _named_templates(prompts["templates"]) and templates:
        prompts["templates"] = list(templates)
    if isinstance(prompts.get("descriptions"), str):
        prompts["descriptions"] = descriptions
    options = out.get("model", {}).get("options", {})
    if isinstance(options.get("templates"), str) and option_templates is not None \
            and not _named_templates(options["templates"]):
        options["templates"] = list(option_templates)
    for key in ENCODER_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section, {}).get(name), str):
            out[section][name] = portable_spec(out[section][name])
    return strip_paths(out)


def portable_spec(spec: str) -> str:
    """An encoder spec with its file or folder cut to the last part (``open_clip:ViT-B-16@/w/ViT-B-16.pt`` ->
    ``open_clip:ViT-B-16@ViT-B-16.pt``); specs that name no local file are returned as they are."""
    return _cut_path(spec) if names_local_files(spec) else spec


def strip_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every path inside its strings cut to the path's last part: a token that starts as
    a path does (``/``, ``~``, ``./``, ``../``, ``C:\\``), or the part after ``local-dir:`` or the last ``@`` where
    that part has a separator or starts as a path. Hub names (``hf-hub:ORG/NAME``, ``timm/...``) stay."""
    if isinstance(value, str):
        return _TOKEN.sub(lambda m: _cut_path(m.group()), value)
    if isinstance(value, list):
        return [strip_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: strip_paths(v) for k, v in value.items()}
    return value


def _cut_path(token: str) -> str:
    if _looks_like_path(token):
        return _last_part(token)
    for marker in ("local-dir:", "@"):
        head, sep, tail = token.rpartition(marker)
        if sep and tail and (marker == "local-dir:" or _looks_like_path(tail) or "/" in tail or "\\" in tail):
            return head + sep + _last_part(tail)
    return token


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "\\", "~", "./", "../", ".\\", "..\\")) or bool(re.match(r"[A-Za-z]:[/\\]", text))


# -- reading ---------------------------------------------------------------------------------------------------
def trusted_config(config: Any, where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``config.json``'s run config, with only what rebuilds the model taken from it: site keys reset to this
    machine's defaults, encoders named by a local file set aside. Returns the config and ``{key: spec}`` of the
    encoders the caller must name (see :func:`with_encoders`). Templates or descriptions named by a file are a
    :class:`CheckpointError` (``where`` names the folder)."""
    if not isinstance(config, dict) or not all(isinstance(config.get(s), dict) for s in ("data", "prompts", "model")):
        raise CheckpointError(f"{where}: config.json has no run config (sections data, prompts, model); write the "
                              "folder again with ivit save")
    out = copy.deepcopy(config)
    defaults = Config().to_dict()
    for key in SITE_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section), dict):
            out[section][name] = defaults[section][name]
    for key in TEXT_KEYS:
        value = _get(out, key)
        if isinstance(value, str) and not (key.endswith("templates") and _named_templates(value)):
            raise CheckpointError(f"{where}: config.json names {key.rsplit('.', 1)[1]} by a file; a model folder "
                                  f"carries them inline and its paths are not followed: write it again with ivit save")
    unresolved = {}
    for key in ENCODER_KEYS:
        section, name = key.split(".")
        spec = out[section].get(name)
        if isinstance(spec, str) and names_local_files(spec):
            unresolved[key] = spec
            out[section][name] = f"{UNRESOLVED}{spec}"
    return out, unresolved


#: Prefix of an encoder spec a model folder names by a local file: no encoder is registered under it, so such a spec
#: can never load a file by accident; :func:`with_encoders` puts the caller's spec in its place.
UNRESOLVED = "unresolved-file:"


def with_encoders(config: dict[str, Any], unresolved: Mapping[str, str], encoder: str | None,
                  image_encoder: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The config with the caller's encoder specs in place of those the folder named by a file (``encoder`` for
    ``prompts.encoder``, and for ``prompts.image_encoder`` too when the folder named the same one; ``image_encoder``
    for a separate image encoder). Returns the config and what is still unresolved."""
    config, left = copy.deepcopy(config), dict(unresolved)
    given = {"prompts.encoder": encoder,
             "prompts.image_encoder": image_encoder or (encoder if unresolved.get("prompts.image_encoder") ==
                                                        unresolved.get("prompts.encoder") else None)}
    for key, spec in given.items():
        if spec and key in left:
            config["prompts"][key.split(".")[1]] = spec
            del left[key]
    if encoder and "prompts.encoder" not in unresolved and config["prompts"].get("encoder") != encoder:
        config["prompts"]["encoder"] = encoder  # a portable spec (a tag) replaced: still checked by weights id
    return config, left


def names_local_files(spec: str) -> bool:
    """Whether an encoder spec names a file or folder of one machine (``open_clip:local-dir:/w/clip``,
    ``open_clip:ViT-B-16@/w/ViT-B-16.pt``), rather than weights anyone can name (a tag, a package, a hub repo)."""
    if spec.startswith(UNRESOLVED):
        return True
    name, _, arg = spec.partition(":") if ":" in spec.split("@", 1)[0] else spec.partition("@")
    if arg.startswith("local-dir:"):
        return True
    if arg.startswith("hf-hub:"):
        return False
    _, at, pretrained = arg.rpartition("@")
    tail = pretrained if at else arg
    return any(sep in tail for sep in "/\\") or tail.startswith(("~", ".")) or \
        tail.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt"))


def _named_templates(value: str) -> bool:
    return value in template_set_names() or value == "promptsrc"


def _get(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _last_part(path: str) -> str:
    path = path.rstrip("/\\")
    name = PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name
    return name or path
