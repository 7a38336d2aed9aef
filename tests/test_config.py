import pytest

from instruction_vit.api import load_config
from instruction_vit.config import Config, ConfigError


def test_layers_defaults_file_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  lr: 0.001\n  epochs: 3\nprompts:\n  kind: image\n")
    cfg = load_config(f, ["train.epochs=5", "model.backbone_kwargs={patch_size: 8}", "prompts.select_k=3"])
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 5 and cfg.prompts.kind == "image"
    assert cfg.model.backbone_kwargs == {"patch_size": 8} and cfg.prompts.select_k == 3
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "prompts.select_k=null"])
    f = tmp_path / "resolved.yaml"
    f.write_text(cfg.to_yaml())
    assert load_config(f) == cfg


def test_int_is_accepted_where_float_is_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", r"unknown config key 'train.lrr'; did you mean train.lr\?"),
        ("trian.lr=0.1", r"unknown config key 'trian'; did you mean train\?"),
        ("train.epochs=many", r"'train.epochs' must be int, got 'many'"),
        ("train.epochs=2.5", r"'train.epochs' must be int"),
        ("train.amp=3", r"'train.amp' must be bool"),
        ("prompts.kind=audio", r"'prompts.kind' is 'audio'; choose one of none, text, image, mixed"),
        ("model.regime=vpt", r"choose one of full, prompt, linear"),
        ("train.mixup_mode=sample", r"'train.mixup_mode' is 'sample'; choose one of batch, pair, elem"),
        ("train.batch_size=0", r"'train.batch_size' must be >= 1"),
        ("data.train_limit=0", r"'data.train_limit' must be >= 1 \(or null: all images\)"),
        ("data.eval_limit=-5", r"'data.eval_limit' must be >= 1"),
        ("lr", r"must look like section.key=value"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    f.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(f)


def test_overrides_on_top_of_a_base_config():
    base = load_config(None, ["train.lr=0.5", "data.img_size=64"]).to_dict()
    cfg = load_config(None, ["data.img_size=32"], base=base)
    assert cfg.train.lr == 0.5 and cfg.data.img_size == 32
    assert base["data"]["img_size"] == 64  # the base is not modified


def test_num_workers_default_to_what_the_machine_has():
    import os

    from instruction_vit.config import DataConfig, resolved_workers

    assert resolved_workers(DataConfig()) == min(8, len(os.sched_getaffinity(0)))
    assert resolved_workers(DataConfig(num_workers=0)) == 0
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(None, ["data.num_workers=-1"])


def test_a_kinds_options_are_validated_and_filled_with_its_defaults():
    """model.options belong to the method: its Options dataclass types them, names the unknown ones and
    fills the defaults, so the resolved config records every value."""
    from dataclasses import dataclass

    from torch import nn

    from instruction_vit.methods import METHODS, Method, register_method

    @dataclass
    class KindOptions:
        weight: float = 8.0
        depth: int = 9

    with METHODS.isolated():
        @register_method("optioned")
        class Optioned(Method):
            """A kind with options."""
            Options = KindOptions

            def build(self, cfg, class_names, prompt_dim=None, pretrained=None) -> nn.Module:
                return nn.Identity()

        cfg = load_config(overrides=["model.method=optioned", "model.options.weight=2"])
        assert cfg.model.options == {"weight": 2.0, "depth": 9}
        assert Optioned().options(cfg) == KindOptions(weight=2.0, depth=9)
        with pytest.raises(ConfigError, match=r"model\.options\.dpth.*did you mean model\.options\.depth"):
            load_config(overrides=["model.method=optioned", "model.options.dpth=3"])
        with pytest.raises(ConfigError, match=r"model\.options\.depth.*must be int"):
            load_config(overrides=["model.method=optioned", "model.options.depth=deep"])

        @register_method("optionless")
        class Optionless(Method):
            """A kind without options."""

            def build(self, cfg, class_names, prompt_dim=None, pretrained=None) -> nn.Module:
                return nn.Identity()

        with pytest.raises(ConfigError, match="takes no model.options"):
            load_config(overrides=["model.method=optionless", "model.options.weight=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.options\.weight' \(valid: vpt_tokens, vpt_deep\)"):
        load_config(overrides=["model.options.weight=2"])  # instruction_vit's options are VPT's


def test_sgd_with_plain_momentum_is_the_prompt_learners_optimizer():
    """Dassl's SGD (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC) is plain momentum 0.9; train.optimizer=sgd is Nesterov."""
    import torch
    from timm.optim import create_optimizer_v2

    model = torch.nn.Linear(2, 2)
    for name, nesterov in (("momentum", False), ("sgd", True)):
        opt = create_optimizer_v2(model, opt=load_config(overrides=[f"train.optimizer={name}"]).train.optimizer, lr=0.1)
        assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
        assert opt.defaults["nesterov"] is nesterov
