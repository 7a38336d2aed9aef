"""Instruction-ViT: a timm Vision Transformer that reads one prompt token per candidate class.

Token sequence fed to the transformer blocks (paper §3.2, Algorithm 1)::

    [CLS; patches + positional embeddings; prompt tokens]

The prompt tokens are appended *after* the positional embedding and receive none, so the model is
permutation-equivariant in its prompts. Two outputs:

* ``logits``: the backbone's own head on its pooled ([CLS]) output, ``[B, num_classes]``;
* ``scores``: ``score_scale * cos(cls_out, prompt_out)`` for every prompt, ``[B, P]`` (paper §3.3).

With no prompts the forward pass is exactly the wrapped timm model (the plain-ViT baseline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from timm.models import VisionTransformer
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from ..errors import ConfigError
from ..outputs import SINGLE_SOURCE, Capabilities, InstructionOutput, Prompts
from .regimes import check_regime


def as_prompts(prompts: Prompts | Tensor) -> Prompts:
    """The public edge of the models: :class:`Prompts`, or one tensor of one source's features (``Prompts.of``)."""
    if isinstance(prompts, Prompts):
        return prompts
    if isinstance(prompts, Tensor):
        return Prompts.of(prompts)
    raise TypeError(f"prompts must be Prompts (or one tensor of features), not {type(prompts).__name__}; "
                    "wrap features of several sources as Prompts({source: features})")


class PromptEmbed(nn.Module):
    """The prompt embedding layer: a linear projection per prompt source, feature dim -> ViT width.

    One prompt dim gives one projection named ``"prompts"`` (the source of :meth:`Prompts.of`); several give one per
    source, and the projected tokens of the sources are averaged. ``Prompts.of(features)`` goes through a model's only
    projection whatever its name."""

    def __init__(self, prompt_dims: Mapping[str, int], width: int) -> None:
        super().__init__()
        for name, dim in prompt_dims.items():
            if int(dim) <= 0:
                raise ConfigError(f"prompt dim for {name!r} must be positive, got {dim}")
        self.proj = nn.ModuleDict({name: nn.Linear(int(dim), width) for name, dim in prompt_dims.items()})

    @property
    def dims(self) -> dict[str, int]:
        return {name: layer.in_features for name, layer in self.proj.items()}

    def forward(self, prompts: Prompts) -> Tensor:
        if not self.proj:
            raise ConfigError(
                "this model was built without a prompt embedding layer (prompt_dim=None): "
                "it is a plain ViT; rebuild it with build_model(..., prompt_dim=D) to use prompts"
            )
        if prompts.sources == (SINGLE_SOURCE,) and SINGLE_SOURCE not in self.proj:
            if len(self.proj) == 1:  # one source's features, one projection (built as {name: dim}): that one
                (name,) = self.proj
                return self._project(name, prompts.single())
            raise ConfigError(
                f"this model projects several prompt sources {sorted(self.proj)}: "
                "pass Prompts({source: features}), one entry per source"
            )
        unknown = sorted(set(prompts.sources) - set(self.proj))
        if unknown:
            raise ConfigError(f"prompt sources {unknown} have no projection; this model has {sorted(self.proj)}")
        tokens = [self._project(name, feats) for name, feats in prompts.features.items()]
        if len(tokens) == 1:
            return tokens[0]
        return torch.stack(torch.broadcast_tensors(*tokens)).mean(0)  # shared [P, W] tokens meet per-sample ones

    def _project(self, name: str, feats: Tensor) -> Tensor:
        layer = self.proj[name]
        if feats.shape[-1] != layer.in_features:
            raise ConfigError(
                f"prompt features for {name!r} have dim {feats.shape[-1]} but the prompt embedding layer "
                f"expects {layer.in_features}: build the prompt bank with the encoder the model was built for, "
                f"or build the model with prompt_dim={feats.shape[-1]}"
            )
        return layer(feats.to(layer.weight.dtype))


class WrapsBackbone:
    """What every model of this package exposes about the timm model it wraps (``self.backbone``)."""

    backbone: nn.Module
    weights_report = None  # what the backbone loaded (a WeightsReport; set by build_model), None for random init

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def head(self) -> nn.Module:
        return self.backbone.get_classifier()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in names}

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]:
        """What ``regime`` trains: ``full`` every parameter, ``prompt`` and ``linear`` the classification head."""
        if check_regime(regime) == "full":
            return list(self.parameters())
        return list(self.head.parameters())


class InstructionViT(WrapsBackbone, nn.Module):
    """Wraps a timm :class:`~timm.models.VisionTransformer` (kept as ``self.backbone``).

    Args:
        backbone: any timm ViT; its ``head`` is the classification head.
        prompt_dims: feature dim of each prompt source, e.g. ``{"text": 512}``; empty for a plain ViT.
        score_scale: multiplier of the cosine scores (the reference code uses 100 under a double softmax).
        vpt_tokens: learnable visual prompt tokens (VPT, Jia et al. 2022), the baseline of Table 2; 0 for none.
        vpt_deep: VPT-deep (new tokens before every block) instead of VPT-shallow (input only).
    """

    @property
    def capabilities(self) -> Capabilities:
        """Reads instruction prompts when built with prompt dims (else a plain ViT); exportable."""
        dims = dict(self.prompt_embed.dims)
        return Capabilities(reads_prompts=bool(dims), prompt_dims=dims)

    def __init__(self, backbone: VisionTransformer, prompt_dims: Mapping[str, int], score_scale: float = 10.0,
                 vpt_tokens: int = 0, vpt_deep: bool = False):
        super().__init__()
        if not isinstance(backbone, VisionTransformer):
            raise TypeError(
                f"Instruction-ViT needs a timm VisionTransformer backbone (token sequence), "
                f"got {type(backbone).__name__}; pick a ViT name such as 'vit_base_patch16_224'"
            )
        self.backbone = backbone
        self.prompt_embed = PromptEmbed(prompt_dims, backbone.embed_dim)
        self.score_scale = float(score_scale)
        # Optional stored prompt features (trainable in prompt tuning when asked); empty by default.
        self.prompt_bank = nn.ParameterDict()
        self.vpt_tokens, self.vpt_deep = int(vpt_tokens), bool(vpt_deep)
        self.visual_prompts = None
        if self.vpt_tokens:
            # VPT's init: uniform(-v, v), v = sqrt(6 / (3 * patch_area + width)).
            patch = backbone.patch_embed.patch_size
            bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + backbone.embed_dim))
            layers = len(backbone.blocks) if vpt_deep else 1
            self.visual_prompts = nn.Parameter(
                torch.empty(layers, self.vpt_tokens, backbone.embed_dim).uniform_(-bound, bound))

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]:
        """What ``regime`` trains: ``full`` every parameter; ``prompt`` the classification head, the prompt embedding
        layer and the VPT tokens; ``linear`` the head. Stored prompt features only with ``train_prompt_features``."""
        stored = list(self.prompt_bank.parameters())
        if check_regime(regime) == "full":
            params = [p for p in self.parameters() if all(p is not s for s in stored)]
        else:
            params = list(self.head.parameters())
            if regime == "prompt":
                params += self.prompt_embed.parameters()
                if self.visual_prompts is not None:
                    params.append(self.visual_prompts)
        return params + stored if train_prompt_features else params

    # -- stored prompts ------------------------------------------------------------------------
    def set_prompt_bank(self, prompts: Prompts | Tensor, trainable: bool = False) -> None:
        """Store prompt features in the model (saved with its weights as ``prompt_bank.<source>``, e.g.
        ``prompt_bank.prompts``); :meth:`bank_prompts` gives them back. A tensor is one source's features."""
        prompts = as_prompts(prompts)
        self.prompt_bank = nn.ParameterDict({name: nn.Parameter(t.detach().clone().float(), requires_grad=trainable)
                                             for name, t in prompts.features.items()})

    def bank_prompts(self) -> Prompts | None:
        """The stored prompt features, as :meth:`forward` takes them (``None`` if none stored)."""
        return Prompts(dict(self.prompt_bank.items())) if self.prompt_bank else None

    # -- forward -------------------------------------------------------------------------------
    def forward_features(self, images: Tensor, prompt_tokens: Tensor | None) -> Tensor:
        """Transformer output for ``[CLS; patches + pos; VPT tokens; prompt_tokens]``, after the final norm."""
        bb = self.backbone
        x = bb.patch_embed(images)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        batch, vpt_start = x.shape[0], x.shape[1]
        extra = []
        if self.visual_prompts is not None:
            extra.append(self.visual_prompts[0].to(x.dtype).expand(batch, -1, -1))
        if prompt_tokens is not None:
            if prompt_tokens.dim() == 2:
                prompt_tokens = prompt_tokens.unsqueeze(0).expand(batch, -1, -1)
            elif prompt_tokens.shape[0] != batch:
                raise ValueError(f"per-sample prompts have batch size {prompt_tokens.shape[0]} but the images {batch}")
            extra.append(prompt_tokens.to(x.dtype))
        x = bb.norm_pre(torch.cat([x, *extra], dim=1))
        if self.vpt_deep:
            vpt_end = vpt_start + self.vpt_tokens
            for i, block in enumerate(bb.blocks):
                if i > 0:  # VPT-deep: each block reads its own fresh visual prompts
                    fresh = self.visual_prompts[i].to(x.dtype).expand(batch, -1, -1)
                    x = torch.cat([x[:, :vpt_start], fresh, x[:, vpt_end:]], dim=1)
                x = block(x)
        elif bb.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(bb.blocks, x)
        else:
            x = bb.blocks(x)
        return bb.norm(x)

    def forward(self, images: Tensor, prompts: Prompts | Tensor | None = None) -> InstructionOutput:
        """``images`` ``[B, 3, H, W]`` read with ``prompts`` (``None``: the wrapped timm model alone, or VPT).

        ``prompts`` is :class:`~instruction_vit.outputs.Prompts`; for compatibility a tensor ``[P, D]`` or
        ``[B, P, D]`` is taken too, as ``Prompts.of(tensor)`` (prompts from one source)."""
        bb = self.backbone
        prompts = as_prompts(prompts) if prompts is not None else None
        if prompts is None and self.visual_prompts is None:
            logits = bb(images)
            return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))
        tokens = self.prompt_embed(prompts) if prompts is not None else None
        num_prompts = tokens.shape[-2] if tokens is not None else 0
        x = self.forward_features(images, tokens)
        num_image = x.shape[1] - num_prompts - self.vpt_tokens
        pooled = bb.forward_head(x[:, :num_image], pre_logits=True)  # VPT and prompt tokens are not pooled
        logits = bb.head(pooled)
        if not num_prompts:
            return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))
        cls = F.normalize(pooled.float(), dim=-1)
        prompt_out = F.normalize(x[:, -num_prompts:].float(), dim=-1)
        scores = self.score_scale * torch.einsum("bd,bpd->bp", cls, prompt_out)
        return InstructionOutput(logits, scores)
