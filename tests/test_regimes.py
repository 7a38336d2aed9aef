import pytest
import torch

from instruction_vit.errors import ConfigError
from instruction_vit.losses import InstructionLoss
from instruction_vit.model import apply_regime, build_model

HEAD = {"backbone.head.weight", "backbone.head.bias"}
EMBED = {"prompt_embed.proj.prompts.weight", "prompt_embed.proj.prompts.bias"}


def _declared(model, regime, train_features=False):
    """The names of the parameters ``model.trainable_parameters`` gives for ``regime``."""
    ids = {id(p) for p in model.trainable_parameters(regime, train_prompt_features=train_features)}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def _grads_after_step(model):
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 32, 32), model.bank_prompts())
    InstructionLoss()(out, torch.tensor([0, 3])).get("loss").backward()
    return {name for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def model(tiny_vit_kwargs):
    m = build_model("vit_tiny_patch16_224", num_classes=5, prompt_dim=16, **tiny_vit_kwargs)
    m.set_prompt_bank(torch.randn(5, 16))
    return m


@pytest.mark.parametrize("train_features", [False, True])
def test_full_regime_trains_everything(model, train_features):
    trainable = set(apply_regime(model, "full", train_prompt_features=train_features))
    expected = {n for n, _ in model.named_parameters()}
    if not train_features:
        expected.discard("prompt_bank.prompts")
    assert trainable == expected == _declared(model, "full", train_features)
    assert _grads_after_step(model) == expected


@pytest.mark.parametrize("train_features", [False, True])
def test_prompt_regime_trains_head_and_prompt_embedding(model, train_features):
    expected = HEAD | EMBED | ({"prompt_bank.prompts"} if train_features else set())
    assert set(apply_regime(model, "prompt", train_prompt_features=train_features)) == expected
    assert _declared(model, "prompt", train_features) == expected
    assert _grads_after_step(model) == expected


def test_linear_regime_trains_the_head_only(model):
    assert set(apply_regime(model, "linear")) == HEAD == _declared(model, "linear")
    assert _grads_after_step(model) == HEAD


def test_unknown_regime(model):
    with pytest.raises(ConfigError, match="unknown training regime 'vpt'"):
        apply_regime(model, "vpt")
    with pytest.raises(ConfigError, match="unknown training regime 'vpt'"):
        model.trainable_parameters("vpt")


def test_vpt_regime_trains_visual_prompts_and_head(tiny_vit_kwargs):
    model = build_model("vit_tiny_patch16_224", 5, None, vpt_tokens=2, vpt_deep=True, **tiny_vit_kwargs)
    expected = HEAD | {"visual_prompts"}
    assert set(apply_regime(model, "prompt")) == expected == _declared(model, "prompt")
    assert _grads_after_step(model) == expected


def test_linear_probe_of_a_cnn():
    model = build_model("resnet18", 3, None)
    head = {"backbone.fc.weight", "backbone.fc.bias"}
    assert set(apply_regime(model, "linear")) == head == _declared(model, "linear") == _declared(model, "prompt")
    assert set(apply_regime(model, "full")) == {n for n, _ in model.named_parameters()} == _declared(model, "full")
