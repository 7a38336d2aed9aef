"""The classifier a user loads: ``predict`` takes one image or many, it says what it is (``repr``), and the prompts it
builds for new class names go into ONNX Runtime as the documented call gives them."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from instruction_vit.api import export_onnx, load_classifier

NEW = ["crimson", "navy", "lime", "white"]


@pytest.fixture(scope="module")
def run(tiny_text_run):
    return tiny_text_run


@pytest.fixture(scope="module")
def classifier(run):
    return load_classifier(run, "cpu")


def test_predict_takes_one_image_or_a_list(classifier, run, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "one.png")
    many = classifier.predict([str(tmp_path / "one.png"), Image.fromarray(pixels)], top_k=2)
    assert len(many) == 2 and many[0] == many[1] and len(many[0]) == 2  # a list: one ranking per image, as before
    one = many[0]
    assert one[0][0] in classifier.classes and isinstance(one[0][1], float)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # uint8 [3, H, W]: one image
    for image in (str(tmp_path / "one.png"), tmp_path / "one.png", Image.fromarray(pixels), pixels, tensor):
        assert classifier.predict(image, top_k=2) == one, type(image)
    assert classifier.predict(torch.stack([tensor, tensor]), top_k=2) == [one, one]  # a batch [B, 3, H, W]: many
    assert classifier.predict((tmp_path / "one.png",), top_k=2) == [one]  # any sequence: a list of rankings
    new = classifier.predict(tmp_path / "one.png", classes=NEW, top_k=3)
    assert len(new) == 3 and {name for name, _ in new} <= set(NEW)


def test_the_classifier_says_what_it_is(classifier):
    text = repr(classifier)
    assert text.startswith("Classifier(") and "best.safetensors" in text
    assert "method='instruction_vit'" in text and "classes=3 [blue, green, red]" in text
    assert "prompts='text from open_clip:local-dir:" in text and "device='cpu'" in text


def test_the_documented_prompts_for_new_names_are_what_onnx_runtime_takes(run, classifier, tmp_path):
    """``class_prompts(names).prompts.onnx_inputs()`` feeds a ``--prompts-input`` graph, and its prompt scores rank
    the new names as ``predict(..., classes=names)`` does."""
    export_onnx(run, tmp_path / "open.onnx", prompts_input=True)
    session = ort.InferenceSession(str(tmp_path / "open.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    pictures = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(4)]
    x = torch.stack([classifier.transform(p) for p in pictures]).numpy()
    inputs = classifier.class_prompts(NEW).prompts.onnx_inputs()
    assert set(inputs) == {"prompts"} and inputs["prompts"].dtype == np.float32
    _, scores = session.run(["logits", "scores"], {"image": x, **inputs})
    probs = torch.from_numpy(scores).softmax(-1)  # new names: the score head ranks them (ivit predict --classes)
    for picture, row in zip(pictures, probs):
        (name, p), *_ = classifier.predict(picture, classes=NEW, top_k=1)
        assert name == NEW[int(row.argmax())] and abs(p - float(row.max())) < 1e-4
    with pytest.raises(ValueError, match="per-sample"):
        from instruction_vit.outputs import Prompts

        Prompts.of(torch.zeros(2, 3, 4)).onnx_inputs()


def test_new_names_load_the_prompt_encoder_once_per_classifier(run, monkeypatch):
    """A page or a notebook asks for many sets of new names: the classifier loads its prompt encoder for the first
    and keeps it (BENCHMARKS.md: the page's memory grew with every new set while each reloaded it); the prompts are
    the same as with a fresh load."""
    from instruction_vit.prompts import bank as bank_module

    fresh = load_classifier(run, "cpu")
    expected = {tuple(names): fresh.class_prompts(names, cache=False).prompts.features
                for names in (NEW, NEW[:2], ["teal", "olive"])}
    loads = []
    real = bank_module.load_encoder
    monkeypatch.setattr(bank_module, "load_encoder", lambda *a, **k: loads.append(a) or real(*a, **k))
    classifier = load_classifier(run, "cpu")
    for names, features in expected.items():
        got = classifier.class_prompts(list(names), cache=False).prompts.features
        assert got.keys() == features.keys() and all(torch.equal(got[k], features[k]) for k in got)
    assert len(loads) == 1  # three sets of names, one load
