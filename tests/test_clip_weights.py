"""CLIP weights in each real format get the activation they were trained with (OpenAI's: QuickGELU).

Tiny random CLIPs are written as OpenAI's TorchScript archive, a plain state dict, a ``local-dir`` folder and a
Hugging Face cache filled on disk; features must equal open_clip's model with the right activation built from
the same state dict, and differ from the other activation's.
"""

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP, convert_weights_to_fp16
from safetensors.torch import save_file
from torch import nn

from helpers import OPENAI_TINY, TEXTS, fill_hf_cache, save_openai_archive  # the hf_cache fixture: conftest.py

from instruction_vit.errors import WeightsError, WeightsUnavailableError
from instruction_vit.prompts import load_encoder
from instruction_vit.prompts.encoders import weights_id

# A CLIP that open_clip.build_model_from_openai_state_dict can infer from shapes alone: it takes the heads as
# width // 64 (text and vision), layers from key counts, image size from patch size x grid.


@pytest.fixture(scope="module")
def openai_weights():
    """OpenAI-style weights (key names, and the tensors open_clip's convert_weights_to_fp16 casts held in fp16 as
    in OpenAI's release) with open_clip's QuickGELU and GELU models holding the same values in fp32."""
    torch.manual_seed(0)
    model = CLIP(**OPENAI_TINY, quick_gelu=True)
    with torch.no_grad():  # larger MLP weights than the init: the two activations then differ clearly
        for name, p in model.named_parameters():
            if "mlp.c_fc.weight" in name:
                p.mul_(8)
    convert_weights_to_fp16(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = {k: v.float() for k, v in state.items()}
    quick, gelu = CLIP(**OPENAI_TINY, quick_gelu=True).eval(), CLIP(**OPENAI_TINY, quick_gelu=False).eval()
    quick.load_state_dict(fp32)
    gelu.load_state_dict(fp32)
    return state, fp32, quick, gelu


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tiny_names(monkeypatch):
    """Built-in-like open_clip names for the tiny model: ``tiny-clip`` (GELU), ``tiny-clip-quickgelu`` and
    ``tiny-clip-wide`` (another architecture)."""
    from open_clip import factory

    for name, extra in (("tiny-clip", {}), ("tiny-clip-quickgelu", {"quick_gelu": True}),
                        ("tiny-clip-wide", {"embed_dim": 32})):
        monkeypatch.setitem(factory._MODEL_CONFIGS, name, {**copy.deepcopy(OPENAI_TINY), **extra})


def features(model, tokenizer, images, texts=TEXTS):
    with torch.no_grad():
        return model.encode_text(tokenizer(texts)), model.encode_image(images)


def assert_features(enc, reference, other, images):
    """``enc`` gives ``reference``'s features (atol 1e-5, fp32) and clearly not ``other``'s."""
    text, image = enc.encode_text(TEXTS), enc.encode_images(images)
    ref_text, ref_image = features(reference, enc.tokenizer, images)
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)
    other_text, other_image = features(other, enc.tokenizer, images)
    assert (text - other_text).abs().max() > 1e-3 and (image - other_image).abs().max() > 1e-3


def test_openai_torchscript_archive_is_quickgelu(tmp_path, tiny_names, openai_weights, images):
    state, _, quick, gelu = openai_weights
    archive = save_openai_archive(state, tmp_path / "tiny-openai.pt")
    spec = f"open_clip:tiny-openai@{archive}"
    enc = load_encoder(spec)
    assert enc.activation == "quick_gelu" and enc.weights_source == f"OpenAI TorchScript archive {archive}"
    assert enc.describe() == f"open_clip tiny-openai (QuickGELU) from OpenAI TorchScript archive {archive}"
    assert next(enc.model.parameters()).dtype == torch.float32 and enc.preprocess.size == 32
    assert_features(enc, quick, gelu, images)
    assert enc.weights_id() == weights_id(spec) and weights_id(spec).endswith("+quick_gelu")

    # The archive defines the architecture (and QuickGELU); a built-in name given with it must be the one it is,
    # with or without -quickgelu, and any other name is only a label.
    assert load_encoder(f"open_clip:tiny-clip@{archive}").activation == "quick_gelu"
    with pytest.raises(WeightsError, match="different CLIP than open_clip's 'ViT-B-16'"):
        load_encoder(f"open_clip:ViT-B-16@{archive}")


def test_plain_state_dict_follows_the_model_name(tmp_path, tiny_names, openai_weights, images):
    _, fp32, quick, gelu = openai_weights
    save_file(fp32, tmp_path / "weights.safetensors")
    torch.save(fp32, tmp_path / "weights.pt")
    for file in ("weights.safetensors", "weights.pt"):
        enc = load_encoder(f"open_clip:tiny-clip-quickgelu@{tmp_path / file}")
        assert enc.activation == "quick_gelu" and enc.weights_source == f"state dict {tmp_path / file}"
        assert enc.describe().startswith("open_clip tiny-clip-quickgelu (QuickGELU) from state dict ")
        assert_features(enc, quick, gelu, images)
    enc = load_encoder(f"open_clip:tiny-clip@{tmp_path / 'weights.safetensors'}")
    assert enc.activation == "gelu" and "(GELU)" in enc.describe()
    assert_features(enc, gelu, quick, images)
    with pytest.raises(WeightsError, match="do not fit model 'tiny-clip-wide'"):
        load_encoder(f"open_clip:tiny-clip-wide@{tmp_path / 'weights.safetensors'}")


def test_weights_id_names_the_activation(tmp_path, tiny_names, openai_weights):
    save_file(openai_weights[1], tmp_path / "weights.safetensors")
    quick_spec = f"open_clip:tiny-clip-quickgelu@{tmp_path / 'weights.safetensors'}"
    gelu_spec = f"open_clip:tiny-clip@{tmp_path / 'weights.safetensors'}"
    assert weights_id(quick_spec).startswith("sha256:") and weights_id(quick_spec).endswith("+quick_gelu")
    assert weights_id(gelu_spec) == weights_id(quick_spec).removesuffix("+quick_gelu") + "+gelu"
    assert weights_id("open_clip:ViT-B-16@openai") == "open_clip:ViT-B-16@openai+quick_gelu"
    assert weights_id("open_clip:ViT-B-16@laion2b_s34b_b88k").endswith("+gelu")
    assert weights_id("open_clip:ViT-B-16-quickgelu@metaclip_400m").endswith("+quick_gelu")


def test_local_dir_follows_its_config(tmp_path, openai_weights, images, tiny_clip_dir):
    _, fp32, quick, gelu = openai_weights
    save_file(fp32, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**OPENAI_TINY, "quick_gelu": True}}))
    enc = load_encoder(f"open_clip:local-dir:{tmp_path}")
    assert enc.activation == "quick_gelu" and enc.weights_source == f"folder {tmp_path}"
    assert_features(enc, quick, gelu, images)
    assert enc.weights_id() == weights_id(enc.name) and enc.weights_id().endswith("+quick_gelu")
    assert weights_id(f"open_clip:local-dir:{tiny_clip_dir}").endswith("+gelu")


def test_hf_hub_repo_from_the_cache_offline(hf_cache, openai_weights, images):
    _, fp32, quick, gelu = openai_weights
    fill_hf_cache(hf_cache, "someorg/tiny-clip", {
        "open_clip_config.json": {"model_cfg": {**OPENAI_TINY, "quick_gelu": True}, "preprocess_cfg": {}},
        "open_clip_model.safetensors": fp32,
    })
    enc = load_encoder("open_clip:hf-hub:someorg/tiny-clip")
    assert enc.activation == "quick_gelu" and enc.weights_source == "hf-hub someorg/tiny-clip"
    assert_features(enc, quick, gelu, images)
    assert enc.weights_id() == weights_id(enc.name) == "open_clip:hf-hub:someorg/tiny-clip+quick_gelu"

    with pytest.raises(WeightsUnavailableError, match=r"someorg/missing .*hf download someorg/missing") as info:
        load_encoder("open_clip:hf-hub:someorg/missing")
    assert "\n" not in str(info.value)
    # A config without its weights is an error, not a randomly initialised model.
    fill_hf_cache(hf_cache, "someorg/config-only", {"open_clip_config.json": {"model_cfg": OPENAI_TINY}})
    with pytest.raises(WeightsUnavailableError, match="someorg/config-only"):
        load_encoder("open_clip:hf-hub:someorg/config-only")


def test_openai_tag_not_cached_names_the_repo(hf_cache):
    with pytest.raises(WeightsUnavailableError, match="timm/vit_base_patch16_clip_224.openai.*Offline, pass a local"):
        load_encoder("open_clip:ViT-B-16@openai")


def vit_b_16_weights() -> dict:
    """Random fp16 weights in ViT-B-16's shapes, made cheaply (150M values: a tiled random block, scaled like an
    init: 1/sqrt(fan-in) for matrices, about 1 for LayerNorm gains, small for biases and embeddings)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CLIP(**open_clip.get_model_config("ViT-B-16")).state_dict().items()}
    block = torch.randn(2 << 20, generator=torch.Generator().manual_seed(0))
    scaled, state = {}, {}
    for i, (key, shape) in enumerate(shapes.items()):
        n = shape.numel()
        if key == "logit_scale":
            scale, offset = 0.0, 4.6
        elif key.endswith(("proj", "text_projection")):
            scale, offset = shape[0] ** -0.5, 0.0
        elif len(shape) >= 2 and "embedding" not in key:
            scale, offset = shape[1:].numel() ** -0.5, 0.0
        elif key.rpartition(".")[0].rpartition(".")[2].startswith("ln_") and key.endswith(".weight"):
            scale, offset = 0.1, 1.0
        else:
            scale, offset = 0.02, 0.0
        if (scale, offset) not in scaled:
            scaled[scale, offset] = (block * scale + offset).half()
        start, m = (i * 7919) % (1 << 20), min(n, 1 << 20)
        state[key] = scaled[scale, offset][start:start + m].repeat(-(-n // m))[:n].view(shape)
    return state


def clip_from_state(model_name: str, state: dict) -> CLIP:
    """open_clip's ``model_name`` CLIP holding ``state`` (in fp32), built without its random init."""
    with torch.device("meta"):
        model = CLIP(**open_clip.get_model_config(model_name))
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    context = model.positional_embedding.shape[0]  # the causal mask is a non-persistent buffer: rebuild it
    model.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    return model.eval()


def test_openai_tag_from_the_hf_cache_builds_quickgelu(hf_cache):
    """A ViT-B-16-shaped random CLIP (150M parameters, fp16 safetensors of 300 MB) where open_clip's ``openai``
    tag is served from: it must load as ``ViT-B-16-quickgelu`` would, although the name says ``ViT-B-16``."""
    state = vit_b_16_weights()
    fill_hf_cache(hf_cache, "timm/vit_base_patch16_clip_224.openai", {"open_clip_model.safetensors": state})
    reference = clip_from_state("ViT-B-16-quickgelu", state)
    del state

    enc = load_encoder("open_clip:ViT-B-16@openai")
    assert enc.activation == "quick_gelu"
    assert enc.weights_source == "tag openai (hf-hub timm/vit_base_patch16_clip_224.openai)"
    assert enc.describe() == f"open_clip ViT-B-16 (QuickGELU) from {enc.weights_source}"
    assert enc.weights_id() == weights_id(enc.name) == "open_clip:ViT-B-16@openai+quick_gelu"
    # Text features only (the image tower is compared in the tiny tests): ViT-B-16 forwards are slow on a CPU.
    text = enc.encode_text(TEXTS[:1])
    with torch.no_grad():
        torch.testing.assert_close(text, reference.encode_text(enc.tokenizer(TEXTS[:1])), atol=1e-5, rtol=0)
        for name, module in reference.named_modules():  # the same weights with GELU: what the name alone builds
            if name.endswith(".mlp"):
                module.gelu = nn.GELU()
        assert (reference.encode_text(enc.tokenizer(TEXTS[:1])) - text).abs().max() > 1e-3
