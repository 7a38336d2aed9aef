"""Quickstart: text prompts from class names, an Instruction-ViT, top-K+1 selection, one training step.

Runs offline on the CPU in seconds (MiniLM text encoder from its wheel; a small ViT from scratch).
"""

import torch

from instruction_vit.losses import InstructionLoss
from instruction_vit.model import apply_regime, build_model
from instruction_vit.prompts import build_prompt_bank, cosine_scores, forward_selected

classes = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
bank = build_prompt_bank("text", classes, text_encoder="minilm", templates=["a photo of a {}."])
model = build_model("vit_tiny_patch16_224", len(classes), bank.prompt_dim, img_size=64, patch_size=8)
apply_regime(model, "full")

images, labels = torch.rand(8, 3, 64, 64), torch.randint(0, len(classes), (8,))
out = model(images, bank.model_input())  # logits [8, 10] from the head, scores [8, 10] from the prompts
parts = InstructionLoss()(out, labels)
parts["loss"].backward()
torch.optim.AdamW(model.parameters(), lr=1e-4).step()
print(f"logits {tuple(out.logits.shape)}  scores {tuple(out.scores.shape)}  "
      f"loss {parts['loss'].item():.3f} (head {parts['head'].item():.3f} + score {parts['score'].item():.3f})")

# Evaluation with selection: a ranker scores all classes; the model reads the top-3 prompts + 1 averaged token.
ranker = cosine_scores(torch.randn(8, bank.prompt_dim), bank.model_input())  # stand-in for image features
selected = forward_selected(model.eval(), images, bank.model_input(), ranker, k=3)
print(f"with K=3 selection: scores {tuple(selected.scores.shape)}, predicted {selected.scores.argmax(1).tolist()}")
