"""methods as registry entries: each builds its model from a run config, and its model says exactly which
parameters each regime trains; a kind registered by a third party is found by model.method."""

import hashlib

import pytest
import torch
from torch import nn

from instruction_vit.methods import (
    METHODS,
    Method,
    get_method,
    list_methods,
    register_method,
)
from instruction_vit.artifacts.checkpoint import model_from_config, save_checkpoint
from instruction_vit.config import Config, DataConfig, ModelConfig, PromptConfig, load_config
from instruction_vit.errors import ConfigError
from instruction_vit.model import REGIMES, MethodModel, PlainModel, apply_regime
from instruction_vit.outputs import Capabilities, InstructionOutput

CLASSES = ["cat", "dog", "owl"]
VIT = ["model.backbone=vit_tiny_patch16_224", "data.img_size=32",
       "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"]
VIT_HEAD = {"backbone.head.weight", "backbone.head.bias"}
EMBED = {"prompt_embed.proj.prompts.weight", "prompt_embed.proj.prompts.bias"}
RESNET_HEAD = {"backbone.fc.weight", "backbone.fc.bias"}


def _names(model, params):
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def _all(model):
    return {name for name, _ in model.named_parameters()}


def _coop_cfg(tiny_clip_dir, method="coop", extra=()):
    return load_config(None, [f"model.method={method}", "prompts.kind=none", "data.img_size=32",
                              f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}", *extra])


# One case per built-in way of building a model: overrides, prompt_dim, model class, and per regime what trains
# ("all": every parameter; an exception type: the regime is refused).
CASES = {
    "instruction_vit: text prompts": ("instruction_vit", VIT, 16, "InstructionViT",
                                      {"full": "all", "prompt": VIT_HEAD | EMBED, "linear": VIT_HEAD}),
    "instruction_vit: VPT-deep, no prompts": ("instruction_vit", VIT + ["model.options.vpt_tokens=2",
                                                                    "model.options.vpt_deep=true"],
                                              None, "InstructionViT",
                                              {"full": "all", "prompt": VIT_HEAD | {"visual_prompts"},
                                               "linear": VIT_HEAD}),
    "instruction_vit: plain ViT": ("instruction_vit", VIT, None, "InstructionViT",
                                   {"full": "all", "prompt": VIT_HEAD, "linear": VIT_HEAD}),
    "instruction_vit: a CNN (plain)": ("instruction_vit", ["model.backbone=resnet18", "data.img_size=32"], None,
                                       "PlainModel", {"full": "all", "prompt": RESNET_HEAD, "linear": RESNET_HEAD}),
    "coop": ("coop", None, None, "CoOpModel",
             {"full": ConfigError, "prompt": {"prompt_embed.context"}, "linear": ConfigError}),
    "cocoop": ("cocoop", None, None, "CoCoOpModel",
               {"full": ConfigError, "linear": ConfigError, "prompt": {
                   "prompt_embed.context", "meta_net.linear1.weight", "meta_net.linear1.bias",
                   "meta_net.linear2.weight", "meta_net.linear2.bias"}}),
    "kgcoop": ("kgcoop", None, None, "KgCoOpModel",
               {"full": ConfigError, "prompt": {"prompt_embed.context"}, "linear": ConfigError}),
    # The tiny CLIP has 1 layer per tower: shallow MaPLe / PromptSRC (tests/test_maple.py, test_promptsrc.py go deep).
    "maple": ("maple", ["model.options.depth=1"], None, "MaPLeModel",
              {"full": ConfigError, "linear": ConfigError, "prompt": {
                  "prompt_learner.context", "prompt_learner.coupling.0.weight", "prompt_learner.coupling.0.bias"}}),
    "promptsrc": ("promptsrc", ["model.options.depth_text=1", "model.options.depth_vision=1"], None,
                  "PromptSRCModel", {"full": ConfigError, "linear": ConfigError,
                                          "prompt": {"prompt_learner.context", "prompt_learner.vision"}}),
}


def _build(case, tiny_clip_dir):
    method, overrides, prompt_dim, _, _ = CASES[case]
    cfg = load_config(None, overrides) if method == "instruction_vit" else _coop_cfg(tiny_clip_dir, method,
                                                                                        overrides or ())
    assert cfg.model.method == method
    return model_from_config(cfg, CLASSES, prompt_dim)


def test_every_built_in_kind_has_cases():
    built_in = {name for name, cls in METHODS.items() if cls.__module__.startswith("instruction_vit.methods")}
    assert built_in == {method for method, *_ in CASES.values()}
    assert {"instruction_vit", "coop"} <= set(list_methods())


@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_builds_from_a_config_and_says_what_each_regime_trains(case, tiny_clip_dir):
    model = _build(case, tiny_clip_dir)
    expected_class, per_regime = CASES[case][3], CASES[case][4]
    assert type(model).__name__ == expected_class and isinstance(model, MethodModel)
    assert set(per_regime) == set(REGIMES)
    for regime, expected in per_regime.items():
        if isinstance(expected, type):
            with pytest.raises(expected, match="nothing to train|does not fit"):
                model.trainable_parameters(regime)
            with pytest.raises(expected, match="nothing to train|does not fit"):
                apply_regime(model, regime)
            continue
        expected = _all(model) if expected == "all" else expected
        assert _names(model, model.trainable_parameters(regime)) == expected, regime
        assert set(apply_regime(model, regime)) == expected, regime
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected, regime


def test_stored_prompt_features_train_only_when_asked(tiny_clip_dir):
    model = _build("instruction_vit: text prompts", tiny_clip_dir)
    model.set_prompt_bank(torch.randn(3, 16))
    assert "prompt_bank.prompts" not in _names(model, model.trainable_parameters("full"))
    assert _names(model, model.trainable_parameters("full", train_prompt_features=True)) == _all(model)
    assert _names(model, model.trainable_parameters("prompt", train_prompt_features=True)) == \
        VIT_HEAD | EMBED | {"prompt_bank.prompts"}
    assert _names(model, model.trainable_parameters("linear", train_prompt_features=True)) == \
        VIT_HEAD | {"prompt_bank.prompts"}


def test_models_carry_no_stand_ins_for_what_they_lack(tiny_clip_dir):
    plain = _build("instruction_vit: a CNN (plain)", tiny_clip_dir)
    coop = _build("coop", tiny_clip_dir)
    for model in (plain, coop):
        for attr in ("vpt_tokens", "visual_prompts", "prompt_bank"):
            assert not hasattr(model, attr), (type(model).__name__, attr)
        assert model.bank_prompts() is None
    assert not hasattr(plain, "prompt_embed") and not hasattr(coop, "head")
    assert isinstance(plain, PlainModel)


def test_kinds_declare_what_they_read():
    vit, coop = get_method("instruction_vit"), get_method("coop")
    assert (vit.name, vit.reads_prompts, vit.timm_backbone, vit.uses_encoder) == ("instruction_vit", True, True, False)
    assert (coop.name, coop.reads_prompts, coop.timm_backbone, coop.uses_encoder) == ("coop", False, False, True)
    assert vit.summary.startswith("Instruction-ViT") and coop.summary.startswith("CoOp")


def test_unknown_kind_names_the_closest():
    cfg = Config(model=ModelConfig(method="instruction_vt"))
    with pytest.raises(ConfigError, match="unknown method 'instruction_vt'; did you mean instruction_vit"):
        model_from_config(cfg, CLASSES, None)


def test_unknown_regime_is_a_config_error(tiny_clip_dir):
    model = _build("instruction_vit: plain ViT", tiny_clip_dir)
    for call in (lambda: model.trainable_parameters("vpt"), lambda: apply_regime(model, "vpt")):
        with pytest.raises(ConfigError, match="unknown training regime 'vpt'"):
            call()


def test_a_run_checkpoint_starts_the_backbone_and_is_named(tmp_path):
    cfg = load_config(None, VIT)
    torch.manual_seed(3)
    trained = model_from_config(cfg, CLASSES, 16)
    path = save_checkpoint(tmp_path / "best.safetensors", trained, {"config": cfg.to_dict(), "class_names": CLASSES})
    cfg.model.pretrained = str(path)
    started = model_from_config(cfg, CLASSES, 16)
    torch.testing.assert_close(started.backbone.state_dict(), trained.backbone.state_dict())
    report = started.weights_report
    assert (report.source, report.format) == (str(path), "instruction-vit checkpoint")
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# -- a kind from outside the package ---------------------------------------------------------------------------
class TinyModel(nn.Module):
    """The smallest model of the classifier protocol: a 1x1 convolution, average pooling and a linear head."""

    capabilities = Capabilities()  # no prompts, no class-name texts: its head's classes only
    weights_report = None

    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, num_classes)

    def forward(self, images, prompts=None):
        logits = self.head(self.backbone(images))
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))

    def bank_prompts(self):
        return None

    def trainable_parameters(self, regime, train_prompt_features=False):
        return list(self.parameters()) if regime == "full" else list(self.head.parameters())


class TinyMethod(Method):
    """A tiny test classifier."""

    reads_prompts = False
    timm_backbone = False

    def build(self, cfg, class_names, prompt_dim=None, pretrained=None):
        return TinyModel(len(class_names))


@pytest.fixture
def tiny_kind():
    """``TinyMethod`` registered as ``tiny_test_kind`` for one test (the registry as it was afterwards)."""
    with METHODS.isolated():
        yield register_method("tiny_test_kind")(TinyMethod)


def test_a_registered_kind_is_found_by_model_method(tiny_kind):
    assert "tiny_test_kind" in list_methods() and get_method("tiny_test_kind").name == "tiny_test_kind"
    cfg = Config(data=DataConfig(img_size=16), prompts=PromptConfig(kind="none"),
                 model=ModelConfig(method="tiny_test_kind", regime="linear", pretrained="/no/such/checkpoint"))
    model = model_from_config(cfg, CLASSES, None)
    assert isinstance(model, TinyModel) and isinstance(model, MethodModel)
    assert apply_regime(model, cfg.model.regime) == ["head.weight", "head.bias"]
    assert model(torch.randn(2, 3, 16, 16)).logits.shape == (2, 3)


def test_a_name_is_registered_once(tiny_kind):
    class Other(TinyMethod):
        """Another tiny kind."""

    register_method("tiny_test_kind")(TinyMethod)  # the same class again: fine
    with pytest.raises(ConfigError, match="'tiny_test_kind' is registered twice"):
        register_method("tiny_test_kind")(Other)
    with pytest.raises(TypeError, match="decorates a Method subclass"):
        register_method("not_a_kind")(TinyModel)
