"""Training regimes: which parameters learn.

* ``full``: everything (full fine-tuning, paper Table 1).
* ``prompt``: the paper's prompt tuning (Table 2): backbone frozen; classification head, prompt
  embedding layer and VPT tokens (when the model has them: the VPT baseline) trained. The reference code leaves the projection frozen at random init; the paper
  says "head and prompt embedding layer", which is what this does.
* ``linear``: the classification head only (linear probe).

Stored prompt features (``model.prompt_bank``) learn only when ``train_prompt_features`` is set.
"""

from __future__ import annotations

from torch import nn

REGIMES = ("full", "prompt", "linear")


def apply_regime(model: nn.Module, regime: str, train_prompt_features: bool = False) -> list[str]:
    """Set ``requires_grad`` for ``regime``; returns the names of the trainable parameters."""
    if regime not in REGIMES:
        raise ValueError(f"unknown training regime {regime!r}; choose one of {', '.join(REGIMES)}")
    model.requires_grad_(regime == "full")
    model.head.requires_grad_(True)
    if regime == "prompt":
        model.prompt_embed.requires_grad_(True)
        if model.visual_prompts is not None:
            model.visual_prompts.requires_grad_(True)
    model.prompt_bank.requires_grad_(train_prompt_features)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"regime {regime!r} leaves {type(model).__name__} nothing to train; choose another regime")
    return trainable
