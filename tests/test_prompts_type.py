"""One prompt type: ``Prompts`` travels from a bank into a model, into a checkpoint and back unchanged."""

import pytest
import torch
from safetensors import safe_open

from instruction_vit.artifacts.checkpoint import load_checkpoint, model_from_config, save_checkpoint
from instruction_vit.config import load_config
from instruction_vit.outputs import Prompts
from instruction_vit.prompts import PromptBank

CLASSES = ["cat", "dog", "owl"]


def test_prompts_check_what_they_hold():
    p = Prompts.of(torch.randn(4, 8))
    assert p.sources == ("prompts",) and p.num_prompts == 4 and p.single().shape == (4, 8)
    two = Prompts({"text": torch.randn(4, 8), "image": torch.randn(2, 4, 12)})
    assert two.sources == ("text", "image") and two.num_prompts == 4
    assert two.to(torch.float64).features["image"].dtype == torch.float64
    with pytest.raises(ValueError, match="several sources"):
        two.single()
    with pytest.raises(ValueError, match="different numbers of prompts"):
        Prompts({"text": torch.randn(4, 8), "image": torch.randn(3, 12)})
    with pytest.raises(ValueError, match=r"must be \[P, D\] or \[B, P, D\]"):
        Prompts.of(torch.randn(8))
    with pytest.raises(ValueError, match="different batch sizes"):
        Prompts({"text": torch.randn(2, 4, 8), "image": torch.randn(3, 4, 12)})
    with pytest.raises(ValueError, match="at least one source"):
        Prompts({})
    features = {"text": torch.randn(4, 8)}
    held = Prompts(features)
    features["image"] = torch.randn(4, 12)  # the caller's dict changes; the prompts do not
    assert held.sources == ("text",)
    with pytest.raises(AttributeError):
        held.features = {}


@pytest.mark.parametrize("features, keys", [
    ({"text": torch.randn(3, 16)}, ["prompt_bank.prompts", "prompt_embed.proj.prompts.weight"]),
    ({"text": torch.randn(3, 16), "image": torch.randn(3, 12)},  # mixed, no joint space: two projections
     ["prompt_bank.text", "prompt_bank.image", "prompt_embed.proj.text.weight", "prompt_embed.proj.image.weight"]),
])
def test_bank_prompts_round_trip_through_a_checkpoint(tmp_path, features, keys):
    torch.manual_seed(0)
    bank = PromptBank("text" if len(features) == 1 else "mixed", features, CLASSES)
    cfg = load_config(None, ["data.img_size=32",
                             "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}"])
    model = model_from_config(cfg, CLASSES, bank.prompt_dim, pretrained=False)
    model.set_prompt_bank(bank.model_input())
    assert isinstance(model.bank_prompts(), Prompts) and set(model.bank_prompts().sources) == set(bank.model_input().sources)
    path = save_checkpoint(tmp_path / "best.safetensors", model.eval(), {"config": cfg.to_dict(),
                                                                         "class_names": CLASSES})
    with safe_open(str(path), framework="pt") as f:
        assert {f"model/{k}" for k in keys} <= set(f.keys())  # the state-dict names old checkpoints carry
    rebuilt = load_checkpoint(path).build_model().eval()
    stored = rebuilt.bank_prompts()
    assert set(stored.sources) == set(bank.model_input().sources)
    for name, feats in bank.model_input().features.items():
        torch.testing.assert_close(stored.features[name], feats, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = model(x, bank.model_input()), rebuilt(x, rebuilt.bank_prompts())
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)
    assert got.scores.shape == (2, len(CLASSES))
