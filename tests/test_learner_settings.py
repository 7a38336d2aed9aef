"""Every method's settings under model.options (the old model.* keys still read, with one note), and the CLIP
learners set up as their official code sets them up (issue 20): CoOp's own default context, one vector per word of
an initial phrase, KgCoOp's phrase, MaPLe's coupling initialisation, the specs' rows at each paper's settings."""

import json
import logging

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from instruction_vit import config as config_module
from instruction_vit.api import load_config
from instruction_vit.artifacts.checkpoint import load_checkpoint, save_checkpoint
from instruction_vit.errors import CheckpointError, ConfigError
from instruction_vit.methods import get_method
from instruction_vit.methods.cocoop import CoCoOpModel
from instruction_vit.methods.coop import CoOpModel
from instruction_vit.methods.kgcoop import KgCoOpModel
from instruction_vit.methods.maple import MaPLeModel, MaPLePrompts
from instruction_vit.methods.promptsrc import PromptSRCModel
from instruction_vit.model import apply_regime
from instruction_vit.prompts import load_encoder
from instruction_vit.resolve import resolve
from instruction_vit.studies.grid import cells
from instruction_vit.studies.specs import load_spec

CLASSES = ["cat", "dog", "car"]
OLD_DEFAULTS = {"coop_context": 16, "coop_init": "a photo of a", "vpt_tokens": 0, "vpt_deep": False}


class _Notes(logging.Handler):
    """The config module's log lines (attached to its logger itself: the CLI may stop propagation to the root)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def notes():
    config_module._note_once.cache_clear()  # "once per process": each test starts without earlier notes
    handler, logger = _Notes(), logging.getLogger("instruction_vit.config")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def old_layout(config: dict) -> dict:
    """A resolved config as this package recorded it before #19: CoOp's and VPT's settings as model.* keys (each one
    written, at the old defaults where unused), and no options for them."""
    model, options = dict(config["model"]), dict(config["model"]["options"])
    old = dict(OLD_DEFAULTS)
    if model["method"] in ("coop", "cocoop", "kgcoop"):
        n_ctx, phrase = options.pop("n_ctx"), options.pop("ctx_init")
        old.update(coop_init=phrase, coop_context=16 if phrase else n_ctx)
    elif model["method"] in ("maple", "promptsrc"):
        old["coop_init"] = options.pop("ctx_init")
    else:
        old.update(vpt_tokens=options.pop("vpt_tokens"), vpt_deep=options.pop("vpt_deep"))
    return {**config, "model": {**model, **old, "options": options}}


def rewrite_checkpoint(path, to):
    """``path``'s checkpoint with its recorded config in the old layout, written to ``to``."""
    with safe_open(str(path), framework="pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["meta"])
    header["meta"] = json.dumps({**meta, "config": old_layout(meta["config"])})
    save_file(tensors, str(to), metadata=header)
    return to


# -- Part A: one place for every method's settings -----------------------------------------------------------------
def test_old_model_keys_are_read_as_their_options_with_one_note_each(tmp_path, notes):
    old = tmp_path / "old.yaml"
    old.write_text("model: {method: coop, coop_init: null, coop_context: 8}\nprompts: {kind: none}\n")
    cfg = load_config(old)
    assert cfg.model.options == {"n_ctx": 8, "ctx_init": None}
    assert load_config(old) == cfg  # read again: the same, and no second note
    assert notes == ["old config keys read under their new names: model.coop_context as model.options.n_ctx, "
                     "model.coop_init as model.options.ctx_init (write the new ones)"]  # one line, once
    vpt = load_config(None, ["model.vpt_tokens=3", "model.vpt_deep=true", "prompts.kind=none"])
    assert vpt.model.options == {"vpt_tokens": 3, "vpt_deep": True}
    assert "model.vpt_tokens as model.options.vpt_tokens, model.vpt_deep as model.options.vpt_deep" in notes[1]
    maple = load_config(None, ["model.method=maple", "prompts.kind=none", "model.coop_init=a_photo_of_a"])
    assert maple.model.options["ctx_init"] == "a_photo_of_a" and maple.model.options["n_ctx"] == 2
    # As before, a phrase sets CoOp's context length: coop_context beside one was ignored, and still is.
    phrase = load_config(None, ["model.method=coop", "prompts.kind=none", "model.coop_init=a photo of a",
                                "model.coop_context=8"])
    assert phrase.model.options == {"n_ctx": 4, "ctx_init": "a photo of a"}
    assert notes[-1] == "model.coop_context=8 is ignored, as before (model.coop_init sets the context length); dropped"
    with pytest.raises(ConfigError, match="model.coop_init and model.options.ctx_init are one setting given twice"):
        load_config(None, ["model.method=coop", "prompts.kind=none", "model.coop_init=a photo",
                           "model.options.ctx_init=a photo of a"])


def test_an_old_saved_config_carries_every_old_key_and_reads_without_a_word(notes):
    """A run of the time recorded all four keys at their defaults; the method's own move, the rest are dropped."""
    for method, options in (("instruction_vit", {"vpt_tokens": 0, "vpt_deep": False}),
                            ("kgcoop", {"n_ctx": 4, "ctx_init": "a photo of a", "weight": 8.0, "template": None})):
        saved = load_config(None, [f"model.method={method}", "prompts.kind=none"]).to_dict()
        assert load_config(None, base=old_layout(saved)).model.options == options
    assert notes and all("read under their new names" in line for line in notes)  # no "ignored" line for the
    # unused keys at their old defaults


def _tiny_coop(tmp_path, tiny_clip_dir, *extra):
    from helpers import colour_folder

    return load_config(None, [
        "data.dataset=folder", f"data.root={colour_folder(tmp_path / 'images', per_class=8)}", "data.img_size=32",
        "data.val_fraction=0.25", "data.randaugment=null", "data.num_workers=0", "prompts.kind=none",
        "model.method=coop", f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}",
        f"prompts.cache_dir={tmp_path / 'cache'}", "model.regime=prompt", "train.batch_size=6", "train.lr=0.01",
        "train.mixup=0", "train.cutmix=0", *extra])


def test_checkpoints_model_folders_and_run_folders_with_the_old_keys_still_load(tmp_path, tiny_clip_dir, notes):
    from typer.testing import CliRunner

    from instruction_vit.cli import app
    from instruction_vit.training import train

    cfg = _tiny_coop(tmp_path, tiny_clip_dir, "model.options.ctx_init=a photo of a", "train.epochs=2")
    train(cfg, tmp_path / "run", stop_after_epochs=1)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old_layout(saved)))  # a run folder of the time
    train(cfg, tmp_path / "run", resume=True)  # its config reads as the same settings: the resume is allowed
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    old = load_checkpoint(rewrite_checkpoint(best, tmp_path / "old.safetensors"))
    assert "coop_init" in old.meta["config"]["model"] and resolve(old.config).config.model.options == cfg.model.options
    torch.testing.assert_close(old.build_model().prompt_embed.context,
                               load_checkpoint(best).tensors["model/prompt_embed.context"])
    folder = tmp_path / "folder"
    result = CliRunner().invoke(app, ["save", str(tmp_path / "run"), str(folder)])
    assert result.exit_code == 0, result.output
    record = json.loads((folder / "config.json").read_text())
    record["config"] = old_layout(record["config"])  # a model folder of the time
    (folder / "config.json").write_text(json.dumps(record))
    model = load_checkpoint(folder, encoder=f"open_clip:local-dir:{tiny_clip_dir}").build_model()
    torch.testing.assert_close(model.prompt_embed.context, old.tensors["model/prompt_embed.context"])


def test_an_old_vpt_checkpoint_still_loads(tmp_path, tiny_vit_kwargs):
    cfg = load_config(None, ["prompts.kind=none", "model.regime=prompt", "data.img_size=32",
                             "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
                             "model.options.vpt_tokens=2", "model.options.vpt_deep=true"])
    model = get_method("instruction_vit").build(cfg, CLASSES)
    path = save_checkpoint(tmp_path / "new.safetensors", model, {"config": cfg.to_dict(), "class_names": CLASSES})
    loaded = load_checkpoint(rewrite_checkpoint(path, tmp_path / "old.safetensors")).build_model()
    assert loaded.vpt_tokens == 2 and loaded.vpt_deep
    torch.testing.assert_close(loaded.visual_prompts, model.visual_prompts)


# -- issue 20, item 1: CoOp's own default ---------------------------------------------------------------------------
def test_each_kind_resolves_its_papers_default_context():
    def options(method):
        return load_config(None, [f"model.method={method}", "prompts.kind=none"]).model.options

    assert options("coop") == {"n_ctx": 16, "ctx_init": None}  # CoOp: 16 random vectors, the official default
    assert options("cocoop") == {"n_ctx": 4, "ctx_init": "a photo of a"}
    assert options("kgcoop") == {"n_ctx": 4, "ctx_init": "a photo of a", "weight": 8.0, "template": None}
    assert (options("maple")["n_ctx"], options("maple")["ctx_init"]) == (2, "a photo of a")
    assert (options("promptsrc")["n_ctx_text"], options("promptsrc")["ctx_init"]) == (4, "a photo of a")
    assert options("instruction_vit") == {"vpt_tokens": 0, "vpt_deep": False}


def test_coops_default_is_16_random_vectors_before_the_class_name(clip):
    torch.manual_seed(0)
    coop = CoOpModel(clip, CLASSES)
    context = coop.prompt_embed.context
    assert context.shape == (16, 32) and 0.015 < context.std().item() < 0.025 and coop.ctx_init is None
    placeholder = clip.tokenizer(["X " * 16 + "cat."])[0]
    assert torch.equal(coop.tokens[0], placeholder)  # [SOS] X*16 cat . [EOS]: the class token at the end
    with pytest.raises(ConfigError, match="fill the text tower's 32 tokens.*smaller model.options.n_ctx"):
        CoOpModel(clip, ["a very long class name " * 3], n_ctx=16)  # cut by the tokenizer: refused


# -- item 2: one vector per word, that many tokens, the rest of the phrase frozen in the text ----------------------
def test_a_phrase_gives_one_vector_per_word_and_keeps_its_other_tokens_in_the_text(clip):
    phrase = "itap of a"  # 3 words, 4 CLIP tokens: it, ap, of, a
    tokens = clip.tokenizer([phrase])[0]
    assert int((tokens > 0).sum()) - 2 == 4
    assert load_config(None, ["model.method=coop", "prompts.kind=none", f"model.options.ctx_init={phrase}"]) \
        .model.options["n_ctx"] == 3
    coop = CoOpModel(clip, CLASSES, ctx_init=phrase).eval()
    embedded = clip.model.token_embedding(clip.tokenizer([f"{phrase} cat."]))[0]
    torch.testing.assert_close(coop.prompt_embed.context, embedded[1:4])  # it, ap, of: learned
    torch.testing.assert_close(coop.suffix[0, 0], embedded[4])  # "a": frozen in the text, before the name
    expected = clip.model.encode_text(clip.tokenizer([f"{phrase} {c}." for c in CLASSES]))
    torch.testing.assert_close(coop.text_features(), expected, atol=1e-5, rtol=1e-4)  # CLIP's own prompt at init
    assert apply_regime(coop, "prompt") == ["prompt_embed.context"]
    coop.text_features().sum().backward()
    assert coop.prompt_embed.context.grad.shape == (3, 32) and not coop.suffix.requires_grad
    # Underscores read as spaces (the official scripts' "a_photo_of_a"); n_ctx up to the phrase's tokens, not more.
    assert CoOpModel(clip, CLASSES, ctx_init="itap_of_a").prompt_embed.context.shape == (3, 32)
    assert CoOpModel(clip, CLASSES, n_ctx=4, ctx_init=phrase).suffix.shape[1] == coop.suffix.shape[1] - 1
    with pytest.raises(ConfigError, match="model.options.n_ctx=5 context tokens, but .*'itap of a' gives 4"):
        CoOpModel(clip, CLASSES, n_ctx=5, ctx_init=phrase)


def test_a_context_saved_at_another_length_is_refused_with_the_setting_that_loads_it(clip, tiny_clip_dir, tmp_path):
    """Before the official rule, "itap of a" gave 4 vectors (one per token): that checkpoint now names n_ctx=4."""
    cfg = load_config(None, ["model.method=coop", "prompts.kind=none", "data.img_size=32",
                             f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}", "model.options.n_ctx=4",
                             "model.options.ctx_init=itap of a"])
    model = get_method("coop").build(cfg, CLASSES)
    path = save_checkpoint(tmp_path / "c.safetensors", model, {"config": cfg.to_dict(), "class_names": CLASSES})
    old = load_checkpoint(rewrite_checkpoint(path, tmp_path / "old.safetensors"))
    with pytest.raises(CheckpointError, match="saved context has 4 vectors.*3.*model.options.n_ctx=4"):
        old.build_model()


# -- item 3: KgCoOp's phrase ---------------------------------------------------------------------------------------
def test_kgcoop_starts_from_the_phrase_its_official_code_hard_codes(clip):
    model = KgCoOpModel(clip, CLASSES, template="a photo of a {}.")
    embedded = clip.model.token_embedding(clip.tokenizer(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(model.prompt_embed.context, embedded)
    assert KgCoOpModel(clip, CLASSES, ctx_init="a bad photo of the").prompt_embed.context.shape == (5, 32)


# -- item 4: MaPLe's couplings -------------------------------------------------------------------------------------
def test_maples_couplings_start_as_the_official_ones(deep_clip):
    """Layer 0's coupling is initialised on its own; layers 1..J-1 are copies of one second initialisation."""
    torch.manual_seed(0)
    maple = MaPLeModel(load_encoder(deep_clip), CLASSES, n_ctx=2, depth=3)
    weights = [c.weight.detach().flatten() for c in maple.prompt_learner.coupling]

    def correlation(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    assert correlation(weights[1], weights[2]) == pytest.approx(1.0)  # copies
    assert torch.equal(weights[1], weights[2]) and not torch.equal(weights[0], weights[1])
    assert abs(correlation(weights[0], weights[1])) < 0.2  # independent draws
    torch.manual_seed(1)  # drawn in the official order: context, layer 0's coupling, deep prompts, the deep layer
    context = torch.zeros(2, 24)
    prompts = MaPLePrompts(context, 3, 24, 32)
    torch.manual_seed(1)
    first = torch.nn.Linear(24, 32)
    deep_text = [torch.randn(2, 24) * 0.02 for _ in range(2)]
    second = torch.nn.Linear(24, 32)
    torch.testing.assert_close(prompts.coupling[0].weight, first.weight)
    torch.testing.assert_close(prompts.deep_text[1], deep_text[1])
    torch.testing.assert_close(prompts.coupling[2].weight, second.weight)


# -- item 6: more context tokens than the phrase gives is refused, not a silent random context ---------------------
def test_deep_prompt_learners_refuse_a_context_longer_than_their_phrase(deep_clip):
    encoder = load_encoder(deep_clip)
    with pytest.raises(ConfigError, match="model.options.n_ctx_text=5 .*gives 4.*ctx_init=null"):
        PromptSRCModel(encoder, CLASSES, n_ctx_text=5, depth_text=2, depth_vision=2)
    with pytest.raises(ConfigError, match="model.options.n_ctx=3 .*'a photo' gives 2"):
        MaPLeModel(encoder, CLASSES, n_ctx=3, depth=2, ctx_init="a photo")
    random = MaPLeModel(encoder, CLASSES, n_ctx=3, depth=2, ctx_init=None)  # asked for: a random context
    assert random.prompt_learner.context.shape == (3, 24)


# -- the specs: each row at its paper's settings -------------------------------------------------------------------
PHOTO = "a photo of a"
EXPECTED = {  # spec -> row -> the learner's options that row resolves to (the official configs cited in the spec)
    "base2novel": {"coop": {"n_ctx": 4, "ctx_init": PHOTO}, "cocoop": {"n_ctx": 4, "ctx_init": PHOTO},
                   "kgcoop": {"n_ctx": 4, "ctx_init": PHOTO, "weight": 8.0},
                   "maple": {"n_ctx": 2, "depth": 9, "ctx_init": PHOTO},
                   "promptsrc": {"n_ctx_text": 4, "n_ctx_vision": 4, "depth_text": 9, "ctx_init": PHOTO}},
    "fewshot": {"coop": {"n_ctx": 16, "ctx_init": None}, "cocoop": {"n_ctx": 4, "ctx_init": PHOTO},
                "kgcoop": {"n_ctx": 4, "ctx_init": PHOTO, "weight": 8.0},
                "maple": {"n_ctx": 2, "depth": 9, "ctx_init": PHOTO},
                "promptsrc": {"n_ctx_text": 4, "depth_text": 9, "ctx_init": PHOTO},
                "vpt_deep": {"vpt_tokens": 10, "vpt_deep": True}},
    "crossdata": {"coop": {"n_ctx": 4, "ctx_init": PHOTO}, "kgcoop": {"ctx_init": PHOTO},
                  "maple": {"n_ctx": 2, "depth": 3, "ctx_init": PHOTO},
                  "promptsrc": {"depth_text": 3, "depth_vision": 3, "ctx_init": PHOTO}},
    "table2": {"coop": {"n_ctx": 4, "ctx_init": PHOTO}, "vpt_shallow": {"vpt_tokens": 10, "vpt_deep": False}},
}


@pytest.mark.parametrize("spec_name", list(EXPECTED))
def test_spec_rows_resolve_to_the_official_settings(spec_name, tmp_path):
    found = list(cells(load_spec(spec_name), tmp_path, seeds=[1]))
    for row, expected in EXPECTED[spec_name].items():
        for cell in (c for c in found if c.row == row):
            options = cell.config.model.options
            assert {k: options[k] for k in expected} == expected, (cell.name, options)
    notes = " ".join(load_spec(spec_name)["notes"])
    assert "bf16 autocast" in notes and "fp16" in notes  # the precision of both paths, said in each spec
    if spec_name != "table2":
        assert "hard-code" in notes or "puts the phrase" in notes  # KgCoOp's phrase


def test_offline_learners_coop_takes_its_few_shot_default_and_ctxv1_for_base_to_novel(tmp_path):
    found = {(c.column, c.row): c.config.model.options for c in cells(load_spec("offline_learners"), tmp_path,
                                                                        seeds=[1])}
    assert found["few_shot_4", "coop"] == {"n_ctx": 16, "ctx_init": None}
    assert found["base_to_novel", "coop"] == {"n_ctx": 4, "ctx_init": PHOTO}
    assert found["few_shot_4", "cocoop"]["ctx_init"] == found["few_shot_4", "kgcoop"]["ctx_init"] == PHOTO


def test_cocoop_and_kgcoop_build_their_default_context(clip):
    assert CoCoOpModel(clip, CLASSES).prompt_embed.context.shape == (4, 32)
    assert KgCoOpModel(clip, CLASSES).ctx_init == PHOTO
