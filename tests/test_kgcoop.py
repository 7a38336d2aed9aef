"""KgCoOp: CoOp plus a loss keeping the class text features near the hand-crafted prompt's (tiny CLIP)."""

import pytest
import torch
import torch.nn.functional as F

from instruction_vit.api import load_config
from instruction_vit.config import ConfigError
from instruction_vit.losses import InstructionLoss
from instruction_vit.methods import get_method
from instruction_vit.methods.kgcoop import KgCoOpModel
from instruction_vit.model import apply_regime

CLASSES = ["cat", "dog", "car"]


def test_it_trains_the_context_only(clip):
    model = KgCoOpModel(clip, CLASSES)
    assert apply_regime(model, "prompt") == ["prompt_embed.context"]
    assert not any(name.startswith("hand_crafted") for name in model.state_dict())  # frozen, rebuilt, not saved


def test_the_extra_loss_is_zero_at_init_and_grows_as_the_context_moves(clip):
    model = KgCoOpModel(clip, CLASSES, weight=8.0, template="a photo of a {}.").train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    out = model(images)
    assert set(out.aux) == {"kg"} and abs(out.aux["kg"].item()) < 1e-5  # the context is the hand-crafted phrase's
    losses = []
    start = model.prompt_embed.context.detach().clone()
    for scale in (0.05, 0.2, 1.0):
        model.prompt_embed.context.data.copy_(start + scale * torch.randn_like(start, generator=torch.Generator().manual_seed(0)))
        losses.append(model(images).aux["kg"].item())
    assert 0 < losses[0] < losses[1] < losses[2] <= 16.0
    # It is weight * (1 - mean cosine) to the frozen hand-crafted features (the official code's form).
    text = F.normalize(model.text_features(), dim=-1)
    reference = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    expected = 8.0 * (1 - (text * reference).sum(-1).mean())
    torch.testing.assert_close(model(images).aux["kg"], expected, atol=1e-5, rtol=1e-4)
    # The training loss adds it under its name; evaluation returns none.
    parts = InstructionLoss()(model(images), labels)
    torch.testing.assert_close(parts["loss"], parts["head"] + parts["kg"])
    assert model.eval()(images).aux is None


def test_the_hand_crafted_prompt_is_the_data_sets_template_and_follows_new_classes(clip, tiny_clip_dir):
    common = ["model.method=kgcoop", "prompts.kind=none", "data.img_size=32",
              f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}"]
    cfg = load_config(None, common + ["data.dataset=oxford_pets"])
    assert cfg.model.options == {"n_ctx": 4, "ctx_init": "a photo of a", "weight": 8.0, "template": None}  # defaults
    # recorded in the resolved config: the official context (4 vectors from the phrase the official code hard-codes)
    model = get_method("kgcoop").build(cfg, CLASSES)
    assert model.template == "a photo of a {}, a type of pet." and model.weight == 8.0
    model = get_method("kgcoop").build(load_config(None, common + ["model.options.weight=2",
                                                                        "model.options.template=a {} toy."]), CLASSES)
    assert (model.template, model.weight) == ("a {} toy.", 2.0)
    model.set_classes(["bus", "tree"])
    expected = F.normalize(clip.model.encode_text(clip.tokenizer(["a bus toy.", "a tree toy."])), dim=-1)
    torch.testing.assert_close(model.hand_crafted, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="unknown config key 'model.options.wieght'"):
        load_config(None, common + ["model.options.wieght=2"])
    with pytest.raises(ConfigError, match="exactly one"):
        get_method("kgcoop").build(load_config(None, common + ["model.options.template=a toy."]), CLASSES)
