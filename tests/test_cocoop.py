"""CoCoOp: CoOp's context plus a meta-network token from each image (over a tiny CLIP in open_clip's format)."""

import pytest
import torch

from instruction_vit.config import ConfigError
from instruction_vit.methods.cocoop import CoCoOpModel
from instruction_vit.methods.coop import CoOpModel
from instruction_vit.model import apply_regime

CLASSES = ["cat", "dog", "car"]


def test_it_trains_the_context_and_the_meta_net_only(clip):
    model = CoCoOpModel(clip, CLASSES)
    assert model.prompt_embed.context.shape == (4, 32)  # "a photo of a": 4 vectors of the text width
    # The official meta-net: Linear(vis_dim, vis_dim // 16) - ReLU - Linear(vis_dim // 16, ctx_dim).
    assert (model.meta_net.linear1.in_features, model.meta_net.linear1.out_features) == (16, 1)
    assert model.meta_net.linear2.out_features == 32
    assert apply_regime(model, "prompt") == ["prompt_embed.context", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                             "meta_net.linear2.weight", "meta_net.linear2.bias"]
    model.train()
    assert not model.text_tower.training and not model.image_tower.training  # frozen towers stay in eval mode
    model(torch.randn(2, 3, 32, 32)).logits.sum().backward()
    learned = {n for n, p in model.named_parameters() if p.grad is not None}
    assert learned == {"prompt_embed.context", "meta_net.linear1.weight", "meta_net.linear1.bias",
                       "meta_net.linear2.weight", "meta_net.linear2.bias"}
    with pytest.raises(ConfigError, match="regime 'full' does not fit CoCoOp.*model.regime=prompt"):
        apply_regime(model, "full")


def test_the_context_changes_with_the_image(clip):
    torch.manual_seed(0)
    model = CoCoOpModel(clip, CLASSES).eval()
    with torch.no_grad():  # a meta-net whose token differs visibly between images
        model.meta_net.linear1.weight.normal_(0, 3)
        model.meta_net.linear1.bias.fill_(1.0)
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    images = torch.cat([a, b, a])
    context = model.image_context(model.image_features(images))
    assert context.shape == (3, 4, 32)
    assert not torch.allclose(context[0], context[1]) and torch.equal(context[0], context[2])
    text = model.text_features(context)
    assert text.shape == (3, 3, 16)
    assert not torch.allclose(text[0], text[1], atol=1e-4) and torch.allclose(text[0], text[2])
    # Each image's logits are those of CoOp with that image's context.
    logits = model(images).logits
    coop = CoOpModel(clip, CLASSES, ctx_init="a photo of a").eval()  # CoCoOp's default context
    for i in range(3):
        coop.prompt_embed.context.data.copy_(context[i])
        torch.testing.assert_close(logits[i], coop(images[i:i + 1]).logits[0], atol=1e-4, rtol=1e-4)
    # The image feature fed to the meta-net is the normalised one (as the official code).
    features = model.image_tower(images)
    torch.testing.assert_close(model.image_features(images), features / features.norm(dim=-1, keepdim=True))


def test_a_zero_token_is_coop(clip):
    model = CoCoOpModel(clip, CLASSES).eval()
    with torch.no_grad():
        model.meta_net.linear2.weight.zero_()
        model.meta_net.linear2.bias.zero_()
    images = torch.randn(2, 3, 32, 32)
    coop = CoOpModel(clip, CLASSES, ctx_init="a photo of a").eval()  # CoCoOp's default context
    torch.testing.assert_close(model(images).logits, coop(images).logits, atol=1e-4, rtol=1e-4)
