"""Training regimes: which parameters learn. Each model says which of its own parameters a regime trains
(``trainable_parameters``, see :class:`~.protocol.MethodModel`); :func:`apply_regime` sets ``requires_grad``.

* ``full``: everything (full fine-tuning, paper Table 1).
* ``prompt``: the paper's prompt tuning (Table 2): backbone frozen; classification head, prompt
  embedding layer and VPT tokens (when the model has them: the VPT baseline) trained. The reference code leaves the
  projection frozen at random init; the paper says "head and prompt embedding layer", which is what this does.
  CoOp: its learned context.
* ``linear``: the classification head only (linear probe); a model without a head (CoOp) refuses it.

Stored prompt features (an Instruction-ViT's ``prompt_bank``) learn only when ``train_prompt_features`` is set.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

REGIMES = ("full", "prompt", "linear")


def check_regime(regime: str) -> str:
    """``regime`` if it is one of :data:`REGIMES`, else a :class:`ConfigError` naming them."""
    if regime not in REGIMES:
        raise ConfigError(f"unknown training regime {regime!r}; choose one of {', '.join(REGIMES)} (model.regime)")
    return regime


def apply_regime(model: nn.Module, regime: str, train_prompt_features: bool = False) -> list[str]:
    """Set ``requires_grad`` for ``regime`` as ``model.trainable_parameters`` says; returns the names of the
    trainable parameters (in ``named_parameters`` order)."""
    check_regime(regime)
    chosen = {id(p) for p in model.trainable_parameters(regime, train_prompt_features=train_prompt_features)}
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in chosen)
        if id(param) in chosen:
            trainable.append(name)
    if not trainable:
        raise ConfigError(f"regime {regime!r} leaves {type(model).__name__} nothing to train; choose another "
                          "model.regime")
    return trainable
