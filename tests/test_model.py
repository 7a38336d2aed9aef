import pytest
import timm
import torch

from instruction_vit.errors import ConfigError
from instruction_vit.model import InstructionOutput, InstructionViT, PromptEmbed, Prompts, build_model


@pytest.fixture
def model(tiny_vit_kwargs):
    torch.manual_seed(0)
    return build_model("vit_tiny_patch16_224", num_classes=5, prompt_dim=16, **tiny_vit_kwargs).eval()


def test_no_prompts_is_exactly_the_timm_model(model, tiny_vit_kwargs):
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=5, **tiny_vit_kwargs).eval()
    reference.load_state_dict(model.backbone.state_dict())
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert isinstance(out, InstructionOutput)
    torch.testing.assert_close(out.logits, reference(x), rtol=0, atol=0)
    assert out.scores.shape == (3, 0)


def test_prompts_are_appended_after_the_patches(model):
    tokens = model.prompt_embed(Prompts.of(torch.randn(7, 16)))
    x = model.forward_features(torch.randn(2, 3, 32, 32), tokens)
    assert x.shape == (2, 1 + 16 + 7, 32)  # [CLS; 4x4 patches; 7 prompts]


def test_outputs_shapes_and_score_range(model):
    out = model(torch.randn(4, 3, 32, 32), torch.randn(6, 16))
    assert out.logits.shape == (4, 5) and out.scores.shape == (4, 6)
    assert out.scores.abs().max() <= model.score_scale + 1e-3


def test_permuting_prompts_permutes_scores_and_keeps_logits(model):
    x, prompts = torch.randn(3, 3, 32, 32), torch.randn(6, 16)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    a, b = model(x, prompts), model(x, prompts[perm])
    torch.testing.assert_close(b.scores, a.scores[:, perm], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-5)


def test_prompts_change_the_logits(model):
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model(x, torch.randn(4, 16)).logits, model(x).logits, atol=1e-4)


def test_per_sample_prompts_equal_shared_prompts_expanded(model):
    x, prompts = torch.randn(3, 3, 32, 32), torch.randn(6, 16)
    shared, per_sample = model(x, prompts), model(x, prompts.expand(3, -1, -1))
    torch.testing.assert_close(per_sample.scores, shared.scores)
    torch.testing.assert_close(per_sample.logits, shared.logits)


def test_per_sample_prompts_batch_mismatch(model):
    with pytest.raises(ValueError, match="batch size 2"):
        model(torch.randn(3, 3, 32, 32), torch.randn(2, 6, 16))


def test_prompt_dim_mismatch_is_explained(model):
    with pytest.raises(ConfigError, match="dim 12 but the prompt embedding layer expects 16"):
        model(torch.randn(1, 3, 32, 32), torch.randn(4, 12))


def test_plain_vit_refuses_prompts(tiny_vit_kwargs):
    plain = build_model("vit_tiny_patch16_224", num_classes=5, prompt_dim=None, **tiny_vit_kwargs)
    with pytest.raises(ConfigError, match="plain ViT"):
        plain(torch.randn(1, 3, 32, 32), torch.randn(4, 16))


def test_one_projection_per_modality_and_their_tokens_are_averaged():
    embed = PromptEmbed({"text": 8, "image": 12}, width=32)
    text, image = torch.randn(5, 8), torch.randn(5, 12)
    expected = (embed.proj["text"](text) + embed.proj["image"](image)) / 2
    torch.testing.assert_close(embed(Prompts({"text": text, "image": image})), expected)
    torch.testing.assert_close(embed(Prompts({"text": text})), embed.proj["text"](text))
    with pytest.raises(ConfigError, match=r"pass Prompts\(\{source: features\}\)"):
        embed(Prompts.of(text))
    with pytest.raises(ConfigError, match="no projection"):
        embed(Prompts({"audio": text}))
    lone = PromptEmbed({"text": 8}, width=32)  # one projection, whatever its name, reads one source's features
    torch.testing.assert_close(lone(Prompts.of(text)), lone.proj["text"](text))
    per_sample = torch.randn(2, 5, 12)  # shared text prompts with per-sample image prompts: the text tokens broadcast
    torch.testing.assert_close(embed(Prompts({"text": text, "image": per_sample}))[1],
                               (embed.proj["text"](text) + embed.proj["image"](per_sample[1])) / 2)


def test_multi_source_model_end_to_end(tiny_vit_kwargs):
    model = build_model("vit_tiny_patch16_224", 4, {"text": 8, "image": 12}, **tiny_vit_kwargs)
    out = model(torch.randn(2, 3, 32, 32), Prompts({"text": torch.randn(4, 8), "image": torch.randn(4, 12)}))
    assert out.scores.shape == (2, 4)
    with pytest.raises(TypeError, match=r"wrap features of several sources as Prompts"):
        model(torch.randn(2, 3, 32, 32), {"text": torch.randn(4, 8), "image": torch.randn(4, 12)})


def test_stored_prompt_bank_round_trip(model):
    prompts = torch.randn(5, 16)
    model.set_prompt_bank(Prompts.of(prompts))
    assert isinstance(model.bank_prompts(), Prompts) and model.bank_prompts().sources == ("prompts",)
    torch.testing.assert_close(model.bank_prompts().single(), prompts)
    assert "prompt_bank.prompts" in model.state_dict()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x, model.bank_prompts()).scores, model(x, prompts).scores)


def test_requires_a_vision_transformer():
    with pytest.raises(TypeError, match="VisionTransformer"):
        InstructionViT(timm.create_model("resnet18", num_classes=3), {"prompts": 8})


def test_no_weight_decay_names_exist(model):
    assert {"backbone.pos_embed", "backbone.cls_token"} <= model.no_weight_decay()
    assert "backbone.pos_embed" in dict(model.named_parameters())


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_tokens_are_read_but_not_pooled(tiny_vit_kwargs, deep):
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 5, 16, vpt_tokens=3, vpt_deep=deep, **tiny_vit_kwargs).eval()
    assert model.visual_prompts.shape == (2 if deep else 1, 3, 32)
    x, prompts = torch.randn(2, 3, 32, 32), torch.randn(4, 16)
    assert model.forward_features(x, model.prompt_embed(Prompts.of(prompts))).shape[1] == 1 + 16 + 3 + 4
    out = model(x, prompts)
    assert out.logits.shape == (2, 5) and out.scores.shape == (2, 4)
    plain_vpt = model(x)  # VPT alone: the VPT baseline, no instruction prompts
    assert plain_vpt.scores.shape == (2, 0)
    with torch.no_grad():
        model.visual_prompts.add_(torch.randn_like(model.visual_prompts))  # (a constant would vanish in LayerNorm)
    assert not torch.allclose(model(x).logits, plain_vpt.logits, atol=1e-4)  # the tokens matter


def test_vpt_deep_replaces_the_tokens_before_each_block(tiny_vit_kwargs):
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 5, None, vpt_tokens=2, vpt_deep=True, **tiny_vit_kwargs).eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x).logits
    with torch.no_grad():
        model.visual_prompts[1].add_(torch.randn_like(model.visual_prompts[1]))  # only the 2nd block's tokens
    assert not torch.allclose(model(x).logits, before, atol=1e-4)


def test_non_vit_backbones_are_plain_baselines():
    from instruction_vit.model import PlainModel

    model = build_model("resnet18", 4, None)
    assert isinstance(model, PlainModel)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 4) and out.scores.shape == (2, 0)
    with pytest.raises(ConfigError, match="not a ViT: it cannot read prompts"):
        model(torch.randn(2, 3, 32, 32), torch.randn(4, 8))


def test_attention_runs_through_scaled_dot_product_attention(model, monkeypatch):
    """Prompt tokens keep timm's fused path: one SDPA call per block (flash attention on a GPU), no mask."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        calls.append((q.shape, kwargs.get("attn_mask", args[0] if args else None)))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model(torch.randn(2, 3, 32, 32), torch.randn(6, 16))
    assert len(calls) == len(model.backbone.blocks)
    assert all(shape[-2] == 1 + 16 + 6 and mask is None for shape, mask in calls)
