"""Class names become prompt texts in one place (``data.templates.class_text``): underscores read as spaces, as CoOp
does ("a photo of a ankle boot.", not "ankle_boot."), while the class names shown stay as given."""

import torch

from instruction_vit.data import class_text
from instruction_vit.methods.coop import CoOpModel
from instruction_vit.methods.kgcoop import KgCoOpModel
from instruction_vit.prompts import build_prompt_bank


class RecordingEncoder:
    """A text encoder that keeps every sentence it is given (features: the sentence's length)."""

    name, dim, modalities, shared_space = "recording", 2, frozenset({"text"}), False

    def __init__(self):
        self.texts: list[str] = []

    def weights_id(self) -> str:
        return "recording-v1"

    def encode_text(self, texts):
        self.texts.extend(texts)
        return torch.tensor([[float(len(t)), 1.0] for t in texts])


def test_underscores_read_as_spaces_in_the_texts_and_the_names_stay_as_given():
    assert class_text("ankle_boot") == "ankle boot" and class_text("T-shirt/top") == "T-shirt/top"
    encoder = RecordingEncoder()
    bank = build_prompt_bank("text", ["ankle_boot", "T-shirt/top"], text_encoder=encoder,
                             templates=["a photo of a {}.", "a {} in a photo."])
    assert encoder.texts == ["a photo of a ankle boot.", "a ankle boot in a photo.", "a photo of a T-shirt/top.",
                             "a T-shirt/top in a photo."]
    assert bank.class_names == ["ankle_boot", "T-shirt/top"]
    assert bank.meta["class_texts"] == ["ankle boot", "T-shirt/top"]


def test_the_bank_key_changes_only_for_names_whose_text_changed(tmp_path):
    """A bank cached before the rule (texts with underscores) is never reused for the new texts; names without
    underscores keep their key (and their cached banks)."""
    plain = build_prompt_bank("text", ["ankle boot", "bag"], text_encoder=RecordingEncoder())
    assert "class_texts" not in plain.meta
    underscored = build_prompt_bank("text", ["ankle_boot", "bag"], text_encoder=RecordingEncoder())
    old_meta = {k: v for k, v in underscored.meta.items() if k not in ("key", "class_texts", "loaded")}
    from instruction_vit.prompts.bank import bank_key

    assert underscored.key != bank_key(old_meta)  # the key the same names had when their texts kept the underscore
    torch.testing.assert_close(underscored.features["text"], plain.features["text"])  # same texts, same numbers


def test_the_clip_prompt_learners_read_the_same_text(clip):
    """CoOp's class prompts (the family's base) and KgCoOp's hand-crafted ones read "ankle boot" for ankle_boot."""
    coop = CoOpModel(clip, ["ankle_boot", "bag"], n_ctx=4, ctx_init=None)
    spaced = CoOpModel(clip, ["ankle boot", "bag"], n_ctx=4, ctx_init=None)
    assert torch.equal(coop.tokens, spaced.tokens) and coop.class_names == ["ankle_boot", "bag"]
    kg = KgCoOpModel(clip, ["ankle_boot", "bag"], n_ctx=4)
    torch.testing.assert_close(kg.hand_crafted, KgCoOpModel(clip, ["ankle boot", "bag"], n_ctx=4)
                               .hand_crafted)
