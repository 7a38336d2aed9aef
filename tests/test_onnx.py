"""ONNX export: ONNX Runtime on the CPU reproduces PyTorch (logits and scores within 1e-4, same top-1) for prompts
baked in and prompts as inputs (new class names), with and without top-K+1 selection, at a batch size other than the
export's; the metadata; the command; and bad input ending in a clear error with nothing written."""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from instruction_vit.api import export_onnx, load_classifier
from instruction_vit.artifacts.export import ExportError, export_model_onnx
from instruction_vit.cli import app
from instruction_vit.errors import ConfigError
from instruction_vit.methods.cocoop import CoCoOpModel
from instruction_vit.methods.coop import CoOpModel
from instruction_vit.model import build_model
from instruction_vit.outputs import Prompts
from instruction_vit.prompts import cosine_scores, forward_selected, load_encoder

NEW = ["crimson", "navy", "lime", "white", "black"]


@pytest.fixture(scope="module")
def run(tiny_text_run):
    return tiny_text_run


@pytest.fixture(scope="module")
def classifier(run):
    return load_classifier(run, "cpu")


@pytest.fixture(scope="module")
def images(classifier):
    rng = np.random.default_rng(3)
    pics = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(5)]
    return torch.stack([classifier.transform(p) for p in pics])  # 5 images; the export traces 2


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _close(got, want):
    got = torch.from_numpy(got)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_baked_prompts_match_pytorch_and_carry_the_metadata(run, classifier, images, tmp_path):
    done = export_onnx(run, tmp_path / "model.onnx")
    assert done.inputs == ["image"] and done.outputs == ["logits", "scores"] and done.max_abs_diff < 1e-4
    logits, scores = _session(tmp_path / "model.onnx").run(None, {"image": images.numpy()})
    with torch.no_grad():
        want = classifier.model(images, classifier.model.bank_prompts())
    _close(logits, want.logits)
    _close(scores, want.scores)
    meta = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(meta["class_names"]) == ["blue", "green", "red"]
    pre = json.loads(meta["preprocessing"])
    assert pre["size"] == 16 and len(pre["mean"]) == 3 and pre["interpolation"] and pre["crop_pct"] == 1.0
    prompts = json.loads(meta["prompts"])
    assert prompts["kind"] == "text" and prompts["baked"] and prompts["encoder"].startswith("open_clip:local-dir:")
    assert prompts["weights"]  # the encoder's weights id: prompts for new classes must come from the same weights
    assert json.loads(meta["select_k"]) is None and set(json.loads(meta["inputs"])) == {"image"}
    assert meta["instruction_vit_version"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o666 & ~umask  # not the private temporary file's


def test_prompts_as_input_score_new_class_names(run, classifier, images, tmp_path):
    export_onnx(run, tmp_path / "open.onnx", prompts_input=True)
    new = classifier.class_prompts(NEW).prompts  # text prompts from the run's own encoder and templates
    session = _session(tmp_path / "open.onnx")
    assert [i.name for i in session.get_inputs()] == ["image", "prompts"]
    logits, scores = session.run(None, {"image": images.numpy(), "prompts": new.single().numpy()})
    with torch.no_grad():
        want = classifier.model(images, new)
    assert scores.shape == (5, len(NEW))
    _close(logits, want.logits)
    _close(scores, want.scores)


def test_top_k_selection_baked_matches_forward_selected(run, classifier, images, tmp_path):
    export_onnx(run, tmp_path / "k1.onnx", select_k=1)
    ranking = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    logits, scores = _session(tmp_path / "k1.onnx").run(None, {"image": images.numpy(), "ranking": ranking.numpy()})
    model = classifier.model
    with torch.no_grad():
        want = forward_selected(model, images, model.bank_prompts(), ranking, 1)
        everything = model(images, model.bank_prompts())
    _close(logits, want.logits)
    _close(scores, want.scores)
    assert not torch.allclose(want.scores, everything.scores)  # the selection did change the scores


def test_top_k_selection_with_new_class_names_and_a_zero_shot_ranking(run, classifier, images, tiny_clip_dir,
                                                                     tmp_path):
    export_onnx(run, tmp_path / "k2.onnx", prompts_input=True, select_k=2)
    new = classifier.class_prompts(NEW).prompts
    encoder = load_encoder(f"open_clip:local-dir:{tiny_clip_dir}")  # the ranker: zero-shot, the same encoder
    pics = [Image.fromarray(np.full((16, 16, 3), c, np.uint8)) for c in (20, 90, 160, 230)]
    ranking = cosine_scores(encoder.encode_images(torch.stack([encoder.image_transform()(p) for p in pics])), new)
    x = torch.stack([classifier.transform(p) for p in pics])
    session = _session(tmp_path / "k2.onnx")
    logits, scores = session.run(None, {"image": x.numpy(), "prompts": new.single().numpy(),
                                        "ranking": ranking.numpy()})
    with torch.no_grad():
        want = forward_selected(classifier.model, x, new, ranking, 2)
    _close(logits, want.logits)
    _close(scores, want.scores)
    few = new.single()[:2]  # P <= K: no rest token; ONNX Runtime refuses instead of answering NaN
    with pytest.raises(Exception, match="k argument"):
        session.run(None, {"image": x.numpy(), "prompts": few.numpy(), "ranking": ranking[:, :2].numpy()})
    with pytest.raises(Exception, match="broadcast"):  # a ranking over other classes than the prompts
        session.run(None, {"image": x.numpy(), "prompts": new.single().numpy(), "ranking": ranking[:, :4].numpy()})


def test_plain_and_clip_prompt_learner_models_export_their_logits(tiny_clip_dir, tiny_vit_kwargs, tmp_path):
    plain = build_model("vit_tiny_patch16_224", 4, None, **tiny_vit_kwargs)
    done = export_model_onnx(plain, tmp_path / "plain.onnx", class_names=list("abcd"), img_size=32)
    assert done.outputs == ["logits"]
    with pytest.raises(ConfigError, match="reads no prompts"):
        export_model_onnx(plain, tmp_path / "x.onnx", class_names=list("abcd"), img_size=32, prompts_input=True)
    coop = CoOpModel(load_encoder(f"open_clip:local-dir:{tiny_clip_dir}"), ["blue", "green", "red"])
    done = export_model_onnx(coop, tmp_path / "coop.onnx", class_names=["blue", "green", "red"], img_size=32)
    x = torch.randn(3, 3, 32, 32)
    (logits,) = _session(tmp_path / "coop.onnx").run(None, {"image": x.numpy()})
    with torch.no_grad():
        _close(logits, coop(x).logits)
    # CoCoOp: a context per image (its meta-net token), so class texts per image, at any batch size.
    cocoop = CoCoOpModel(load_encoder(f"open_clip:local-dir:{tiny_clip_dir}"), ["blue", "green", "red"])
    torch.nn.init.normal_(cocoop.meta_net.linear2.weight, std=0.5)  # a token that really differs per image
    export_model_onnx(cocoop.eval(), tmp_path / "cocoop.onnx", class_names=["blue", "green", "red"], img_size=32)
    x = torch.randn(5, 3, 32, 32)
    (logits,) = _session(tmp_path / "cocoop.onnx").run(None, {"image": x.numpy()})
    with torch.no_grad():
        _close(logits, cocoop(x).logits)
    for bad in (dict(prompts_input=True), dict(select_k=1)):
        with pytest.raises(ConfigError, match="class-name text"):
            export_model_onnx(coop, tmp_path / "x.onnx", class_names=["a", "b", "c"], img_size=32, **bad)
    assert not (tmp_path / "x.onnx").exists()


def test_an_export_that_misses_the_tolerance_is_not_written(tiny_vit_kwargs, tmp_path):
    model = build_model("vit_tiny_patch16_224", 4, 8, **tiny_vit_kwargs)
    model.set_prompt_bank(Prompts.of(torch.randn(4, 8)))
    with pytest.raises(ExportError, match="not exported"):
        export_model_onnx(model, tmp_path / "m.onnx", class_names=list("abcd"), img_size=32, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []  # not even a temporary file


def test_missing_onnx_extra_is_a_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install onnx onnxruntime onnxscript \(the onnx extra; in a checkout: pip install -e '\.\[onnx\]'\)"):
        export_onnx(run, tmp_path / "m.onnx")


def test_the_command_exports_and_refuses_bad_input(run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                                 "--select-k", "2", "--opset", "18"])
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.output and "ranking" in result.output
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == 18
    for args, message in ((["export", str(tmp_path / "missing"), "--out", str(tmp_path / "a.onnx")], "not found"),
                          (["export", str(run), "--format", "tflite", "--out", str(tmp_path / "a.onnx")], "onnx")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "a.onnx").exists()


def test_two_prompt_sources_are_two_inputs(tiny_vit_kwargs, tmp_path):
    model = build_model("vit_tiny_patch16_224", 4, {"text": 8, "image": 6}, **tiny_vit_kwargs)
    done = export_model_onnx(model, tmp_path / "m.onnx", class_names=list("abcd"), img_size=32, prompts_input=True)
    assert done.inputs == ["image", "prompts_text", "prompts_image"]  # the parity check ran P = 5 against P = 4
    text, image = torch.randn(7, 8), torch.randn(7, 6)
    x = torch.randn(2, 3, 32, 32)
    _, scores = _session(tmp_path / "m.onnx").run(None, {"image": x.numpy(), "prompts_text": text.numpy(),
                                                         "prompts_image": image.numpy()})
    with torch.no_grad():
        _close(scores, model.eval()(x, Prompts({"text": text, "image": image})).scores)


def test_the_cpu_benchmark_script_measures_both_runtimes(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "onnx_cpu.py"
    spec = importlib.util.spec_from_file_location("onnx_cpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (row,) = bench.main(["--models", "tiny", "--repeats", "1"])
    assert row["pytorch_img_s"] > 0 and row["onnxruntime_img_s"] > 0 and row["max_abs_diff"] < 1e-4
    assert "| tiny (vit_tiny_patch16_224, 16 px, 3 prompts) | 4 |" in capsys.readouterr().out
