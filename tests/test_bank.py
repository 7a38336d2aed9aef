import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import instruction_vit.prompts.bank as bank_module
from instruction_vit.data import template_set
from instruction_vit.model import build_model
from instruction_vit.prompts import PromptBank, PromptEncoder, build_prompt_bank, choose_prompt_images, load_encoder
from instruction_vit.prompts.encoders import ImagePreprocess

CLASSES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "art of the {}."]


class Images:
    """A tiny labelled image collection (uint8 tensors), the ImageSource protocol."""

    def __init__(self, n_per_class=4, classes=3, size=40):
        g = torch.Generator().manual_seed(0)
        self.labels = [c for c in range(classes) for _ in range(n_per_class)]
        self.images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g) for _ in self.labels]

    def load_image(self, i):
        return self.images[i]

    def image_id(self, i):
        return f"img{i:03d}.png"


class PixelEncoder(PromptEncoder):
    """A user-defined image-only encoder (no joint space): mean colour per quadrant."""

    name, dim, modalities = "pixels", 12, frozenset({"image"})
    preprocess = ImagePreprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def weights_id(self):
        return "none"

    def encode_images(self, images):
        return F.avg_pool2d(images, 8).flatten(1)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_encoder(f"open_clip:local-dir:{tiny_clip_dir}")


def test_encoder_loads_the_saved_weights(clip, tiny_clip_dir):
    saved = load_file(tiny_clip_dir / "open_clip_model.safetensors")
    for name, value in clip.model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)
    assert clip.dim == 16 and clip.shared_space and clip.weights_id().startswith("sha256:")


def test_text_bank_equals_open_clip_zero_shot_classifier(clip):
    bank = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES)
    reference = open_clip.build_zero_shot_classifier(clip.model, clip.tokenizer, CLASSES, TEMPLATES)
    torch.testing.assert_close(bank.features["text"], reference.T, atol=1e-6, rtol=1e-5)
    assert bank.prompt_dim == 16 and bank.model_input().sources == ("prompts",)
    assert bank.model_input().single() is bank.features["text"]


def test_descriptions_join_the_templates(clip):
    desc = {"dog": ["a loyal four-legged animal that barks."]}
    bank = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES[:1], descriptions=desc)
    feats = F.normalize(clip.encode_text(["a photo of a dog.", desc["dog"][0]]), dim=-1).mean(0)
    torch.testing.assert_close(bank.features["text"][1], F.normalize(feats, dim=0))
    with pytest.raises(ValueError, match="not in the class list"):
        build_prompt_bank("text", CLASSES, text_encoder=clip, descriptions={"cow": ["moo"]})


def test_image_prompts_are_seeded_random_training_images():
    labels = Images().labels
    a, b = choose_prompt_images(labels, 3, seed=0), choose_prompt_images(labels, 3, seed=0)
    assert a == b and all(len(idx) == 1 and labels[idx[0]] == c for c, idx in enumerate(a))
    seeds = {tuple(map(tuple, choose_prompt_images(labels, 3, seed=s))) for s in range(10)}
    assert len(seeds) > 1
    assert [len(i) for i in choose_prompt_images(labels, 3, per_class=9)] == [4, 4, 4]
    with pytest.raises(ValueError, match=r"classes \[2\] have no image"):
        choose_prompt_images([0, 1, 0], 3)


def test_image_bank_is_the_normalised_mean_of_chosen_images(clip):
    images = Images()
    bank = build_prompt_bank("image", CLASSES, image_encoder=clip, images=images, per_class=2, seed=3)
    chosen = choose_prompt_images(images.labels, 3, per_class=2, seed=3)
    transform = clip.image_transform()
    for c, idx in enumerate(chosen):
        feats = F.normalize(clip.encode_images(torch.stack([transform(images.load_image(i)) for i in idx])), dim=-1)
        torch.testing.assert_close(bank.features["image"][c], F.normalize(feats.mean(0), dim=0), atol=1e-5, rtol=1e-5)
    assert bank.meta["image_ids"] == [[images.image_id(i) for i in idx] for idx in chosen]


def test_mixed_in_a_joint_space_is_the_mean(clip):
    images = Images()
    text = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES)
    image = build_prompt_bank("image", CLASSES, image_encoder=clip, images=images)
    mixed = build_prompt_bank("mixed", CLASSES, text_encoder=clip, image_encoder=clip, templates=TEMPLATES,
                              images=images)
    assert list(mixed.features) == ["mixed"]
    torch.testing.assert_close(mixed.features["mixed"], (text.features["text"] + image.features["image"]) / 2)


def test_mixed_without_a_joint_space_keeps_both_for_separate_projections(clip, tiny_vit_kwargs):
    mixed = build_prompt_bank("mixed", CLASSES, text_encoder=clip, image_encoder=PixelEncoder(),
                              templates=TEMPLATES, images=Images())
    assert mixed.prompt_dim == {"text": 16, "image": 12}
    model = build_model("vit_tiny_patch16_224", 3, mixed.prompt_dim, **tiny_vit_kwargs)
    assert mixed.model_input().sources == ("text", "image")
    assert model(torch.randn(2, 3, 32, 32), mixed.model_input()).scores.shape == (2, 3)


def test_cache_hit_encodes_nothing_and_loads_no_encoder(tmp_path, tiny_clip_dir, monkeypatch):
    spec = f"open_clip:local-dir:{tiny_clip_dir}"
    first = build_prompt_bank("text", CLASSES, text_encoder=spec, templates=TEMPLATES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("text-*.safetensors"))) == 1

    def refuse(*_args, **_kwargs):
        raise AssertionError("the encoder was loaded on a cache hit")

    monkeypatch.setattr(bank_module, "load_encoder", refuse)
    again = build_prompt_bank("text", CLASSES, text_encoder=spec, templates=TEMPLATES, cache_dir=tmp_path)
    torch.testing.assert_close(again.features["text"], first.features["text"], rtol=0, atol=0)
    assert again.key == first.key and again.meta["templates"] == TEMPLATES
    with pytest.raises(AssertionError, match="cache hit"):  # another key is a miss: it must encode
        build_prompt_bank("text", CLASSES[:2], text_encoder=spec, templates=TEMPLATES, cache_dir=tmp_path)


def test_cache_hit_with_an_encoder_object(tmp_path, clip, monkeypatch):
    first = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES, cache_dir=tmp_path)
    monkeypatch.setattr(clip, "encode_text", lambda texts: pytest.fail("encoded on a cache hit"))
    again = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES, cache_dir=tmp_path)
    torch.testing.assert_close(again.features["text"], first.features["text"])


def test_key_depends_on_what_the_numbers_depend_on(clip):
    base = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES)
    other_templates = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES[:2])
    other_classes = build_prompt_bank("text", CLASSES[::-1], text_encoder=clip, templates=TEMPLATES)
    assert len({base.key, other_templates.key, other_classes.key}) == 3


def test_save_and_load_round_trip(tmp_path, clip):
    bank = build_prompt_bank("text", CLASSES, text_encoder=clip, templates=TEMPLATES)
    path = bank.save(tmp_path / "bank")
    loaded = PromptBank.load(path)
    assert loaded.class_names == CLASSES and loaded.kind == "text" and loaded.key == bank.key
    torch.testing.assert_close(loaded.features["text"], bank.features["text"])
    other = build_prompt_bank("text", CLASSES[:2], text_encoder=clip, templates=TEMPLATES)
    other.save(tmp_path / "other")
    (tmp_path / "other.json").replace(tmp_path / "bank.json")  # a pair that does not belong together
    with pytest.raises(ValueError, match="differ"):
        PromptBank.load(tmp_path / "bank")
    with pytest.raises(FileNotFoundError, match="missing"):
        PromptBank.load(tmp_path / "none")


def test_bad_inputs_are_named(clip):
    with pytest.raises(ValueError, match="class list is empty"):
        build_prompt_bank("text", [], text_encoder=clip)
    with pytest.raises(ValueError, match="duplicate class names"):
        build_prompt_bank("text", ["a", "a"], text_encoder=clip)
    with pytest.raises(ValueError, match="unknown prompt kind"):
        build_prompt_bank("audio", CLASSES, text_encoder=clip)
    with pytest.raises(ValueError, match="exactly one"):
        build_prompt_bank("text", CLASSES, text_encoder=clip, templates=["a photo"])
    with pytest.raises(ValueError, match="need a text_encoder"):
        build_prompt_bank("text", CLASSES)
    with pytest.raises(ValueError, match="need an image_encoder and images"):
        build_prompt_bank("image", CLASSES, image_encoder=clip)
    with pytest.raises(ValueError, match="cannot encode text"):
        build_prompt_bank("text", CLASSES, text_encoder=PixelEncoder())


def test_template_sets(tmp_path):
    assert len(template_set("openai_imagenet")) == 80 and len(template_set("simple")) == 7
    assert template_set("coop:oxford_pets") == ["a photo of a {}, a type of pet."]
    f = tmp_path / "t.txt"
    f.write_text("# mine\na picture of a {}.\n\nthe {}, up close.\n")
    assert template_set(str(f)) == ["a picture of a {}.", "the {}, up close."]
    f.write_text("no placeholder\n")
    with pytest.raises(ValueError, match="exactly one"):
        template_set(str(f))
    with pytest.raises(ValueError, match="unknown template set"):
        template_set("nope")
