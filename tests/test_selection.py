import math

import pytest
import torch

from instruction_vit.model import build_model
from instruction_vit.prompts import (
    Prompts,
    class_prototypes,
    cosine_scores,
    expand_scores,
    forward_selected,
    gather_prompts,
    select_top_k,
    target_mask,
)

RANKER = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0, 0.5], [0.7, 0.2, 0.6, 0.1, 0.9, 0.3]])


def test_top_k_indices_best_first():
    sel = select_top_k(RANKER, 3)
    assert sel.index.tolist() == [[1, 3, 5], [4, 0, 2]]
    assert sel.has_rest and sel.num_classes == 6


def test_keep_forces_the_target_in():
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[0, 4] = keep[1, 3] = True
    sel = select_top_k(RANKER, 2, keep)
    assert sel.index.tolist() == [[4, 1], [3, 4]]
    keep[0, :3] = True
    with pytest.raises(ValueError, match="keeps 4 classes but only k=2"):
        select_top_k(RANKER, 2, keep)


def test_gather_keeps_top_k_and_averages_the_rest():
    prompts = torch.randn(6, 4)
    sel = select_top_k(RANKER, 2)
    got = gather_prompts(Prompts.of(prompts), sel).single()
    assert got.shape == (2, 3, 4)
    for b, chosen in enumerate(sel.index.tolist()):
        torch.testing.assert_close(got[b, :2], prompts[chosen])
        rest = [c for c in range(6) if c not in chosen]
        torch.testing.assert_close(got[b, 2], prompts[rest].mean(0))


def test_gather_per_sample_and_mapping_prompts():
    per_sample = torch.randn(2, 6, 4)
    sel = select_top_k(RANKER, 4)
    got = gather_prompts(Prompts({"text": per_sample, "image": per_sample[0]}), sel)
    assert got.sources == ("text", "image") and got.num_prompts == 5
    got = got.features
    torch.testing.assert_close(got["text"][1, :4], per_sample[1, sel.index[1]])
    torch.testing.assert_close(got["image"][1, :4], per_sample[0, sel.index[1]])
    rest = [c for c in range(6) if c not in sel.index[1].tolist()]
    torch.testing.assert_close(got["text"][1, 4], per_sample[1, rest].mean(0))


def test_expand_scores_maps_back_and_preserves_probabilities():
    sel = select_top_k(RANKER, 2)
    scores = torch.tensor([[5.0, 3.0, 1.0], [2.0, 4.0, 6.0]])
    full = expand_scores(scores, sel)
    assert full.shape == (2, 6)
    assert full[0, 1] == 5.0 and full[0, 3] == 3.0 and full[1, 4] == 2.0 and full[1, 0] == 4.0
    assert torch.allclose(full[0, [0, 2, 4, 5]], torch.tensor(1.0 - math.log(4)))
    p_full, p_sel = full.softmax(-1), scores.softmax(-1)
    for b in range(2):
        torch.testing.assert_close(p_full[b, sel.index[b]], p_sel[b, :2])
        others = [c for c in range(6) if c not in sel.index[b].tolist()]
        torch.testing.assert_close(p_full[b, others].sum(), p_sel[b, 2])


def test_expand_scores_checks_width():
    with pytest.raises(ValueError, match="expected 3 scores"):
        expand_scores(torch.randn(2, 2), select_top_k(RANKER, 2))


def test_k_at_least_n_selects_everything_without_rest():
    sel = select_top_k(RANKER, 10)
    assert sel.k == 6 and not sel.has_rest
    assert gather_prompts(Prompts.of(torch.randn(6, 3)), sel).single().shape == (2, 6, 3)
    with pytest.raises(TypeError, match=r"Prompts.of\(features\)"):
        gather_prompts(torch.randn(6, 3), sel)


def test_forward_selected_with_all_classes_equals_running_all_prompts(tiny_vit_kwargs):
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 6, 8, **tiny_vit_kwargs).eval()
    images, prompts = torch.randn(2, 3, 32, 32), Prompts.of(torch.randn(6, 8))
    full = model(images, prompts)
    selected = forward_selected(model, images, prompts, RANKER, k=6)
    torch.testing.assert_close(selected.scores, full.scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(selected.logits, full.logits, atol=1e-4, rtol=1e-5)


def test_forward_selected_runs_k_plus_one_prompts(tiny_vit_kwargs):
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 6, 8, **tiny_vit_kwargs).eval()
    images, prompts = torch.randn(2, 3, 32, 32), Prompts.of(torch.randn(6, 8))
    sel = select_top_k(RANKER, 3)
    direct = model(images, gather_prompts(prompts, sel))
    assert direct.scores.shape == (2, 4)
    out = forward_selected(model, images, prompts, RANKER, k=3)
    assert out.scores.shape == (2, 6)
    torch.testing.assert_close(out.scores, expand_scores(direct.scores, sel))


def test_rankers():
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    bank = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(cosine_scores(feats, bank), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(cosine_scores(feats, Prompts.of(bank)), cosine_scores(feats, bank))
    protos = class_prototypes(feats, torch.tensor([0, 1, 1]), 2)
    torch.testing.assert_close(protos[0], torch.tensor([1.0, 0.0]))
    expected = torch.nn.functional.normalize(torch.tensor([0.7071, 1.7071]), dim=0)
    torch.testing.assert_close(protos[1], expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no features"):
        class_prototypes(feats, torch.tensor([0, 0, 0]), 2)


def test_target_mask_hard_and_mixed_soft_targets():
    from timm.data import Mixup

    assert target_mask(torch.tensor([2, 0]), 4).tolist() == [[False, False, True, False], [True, False, False, False]]
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=6)
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3])
    _, soft = mixup(torch.randn(4, 3, 8, 8), labels)
    mask = target_mask(soft, 6)
    for b in range(4):  # timm mixes each sample with the flipped batch
        assert set(torch.nonzero(mask[b]).flatten().tolist()) == {int(labels[b]), int(labels.flip(0)[b])}
    keep_all = select_top_k(torch.randn(4, 6), 2, mask)
    assert all(set(row) == set(torch.nonzero(m).flatten().tolist()) for row, m in zip(keep_all.index.tolist(), mask))
