import pytest
import torch
import torch.nn.functional as F

from instruction_vit.losses import InstructionLoss
from instruction_vit.model import InstructionOutput


def _output(b=4, n=6):
    torch.manual_seed(0)
    return InstructionOutput(torch.randn(b, n), 30 * torch.randn(b, n))


def test_sum_of_two_cross_entropies_with_scores_as_logits():
    out, target = _output(), torch.tensor([0, 5, 2, 2])
    parts = InstructionLoss()(out, target)
    head, score = F.cross_entropy(out.logits, target), F.cross_entropy(out.scores, target)
    torch.testing.assert_close(parts["head"], head)
    torch.testing.assert_close(parts["score"], score)
    torch.testing.assert_close(parts["loss"], head + score)
    # not the reference code's softmax-then-cross-entropy
    assert not torch.allclose(parts["score"], F.cross_entropy(out.scores.softmax(-1), target))


def test_weights_and_soft_targets():
    out = _output()
    soft = torch.softmax(torch.randn(4, 6), dim=-1)
    parts = InstructionLoss(head_weight=0.5, score_weight=2.0)(out, soft)
    head = -(soft * out.logits.log_softmax(-1)).sum(-1).mean()
    score = -(soft * out.scores.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(parts["loss"], 0.5 * head + 2.0 * score)


def test_label_smoothing_matches_torch():
    out, target = _output(), torch.tensor([1, 1, 0, 3])
    parts = InstructionLoss(label_smoothing=0.1)(out, target)
    torch.testing.assert_close(parts["score"], F.cross_entropy(out.scores, target, label_smoothing=0.1))


def test_without_prompts_only_the_head_counts():
    out = InstructionOutput(torch.randn(3, 5), torch.zeros(3, 0))
    parts = InstructionLoss()(out, torch.tensor([0, 1, 4]))
    assert set(parts) == {"loss", "head"}
    torch.testing.assert_close(parts["loss"], parts["head"])


def test_scores_not_one_per_class_are_refused():
    out = InstructionOutput(torch.randn(2, 6), torch.randn(2, 4))
    with pytest.raises(ValueError, match="soft targets cover 6 classes but scores has 4"):
        InstructionLoss()(out, torch.softmax(torch.randn(2, 6), -1))
    with pytest.raises(ValueError, match="out of range for scores"):
        InstructionLoss()(out, torch.tensor([5, 0]))


def test_bad_settings():
    with pytest.raises(ValueError):
        InstructionLoss(label_smoothing=1.0)
    with pytest.raises(ValueError):
        InstructionLoss(score_weight=-1)


def test_a_methods_extra_terms_are_added_under_their_names():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    kg = torch.tensor(0.25)
    parts = InstructionLoss()(InstructionOutput(logits, logits.new_zeros(4, 0), {"kg": kg}), target)
    assert torch.allclose(parts["kg"], kg)
    assert torch.allclose(parts["loss"], F.cross_entropy(logits, target) + kg)
    with pytest.raises(ValueError, match="may not be called 'loss'"):
        InstructionLoss()(InstructionOutput(logits, logits.new_zeros(4, 0), {"loss": kg}), target)
