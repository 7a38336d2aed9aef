"""The package's top level is the library's face (the README's API example runs in tests/test_readme.py)."""

import subprocess
import sys

import instruction_vit as ivit


def test_every_public_name_is_documented_and_typed():
    import inspect

    for name in ivit.__all__:
        obj = getattr(ivit, name)
        assert inspect.getdoc(obj), name
        if inspect.isfunction(obj):
            hints = inspect.signature(obj)
            assert all(p.annotation is not inspect.Parameter.empty for p in hints.parameters.values()
                       if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "progress"), name


def test_importing_the_package_loads_nothing_heavy():
    code = "import sys, instruction_vit; print(sorted(m for m in ('torch', 'timm', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_build_prompts_reads_a_descriptions_file_for_the_names_it_lists(tmp_path, tiny_clip_dir):
    """The text prompts a run builds with prompts.descriptions (the demo page's ranker builds them this way): each
    listed class gets its sentences beside the templates; names the file lacks get the templates alone."""
    import torch

    from instruction_vit.prompts import build_prompt_bank

    spec = f"open_clip:local-dir:{tiny_clip_dir}"
    (tmp_path / "desc.yaml").write_text("red: [a ripe tomato., a fire engine.]\nblue: [the clear sky.]\n")
    names = ["red", "green"]  # blue is described but not asked for; green is not described
    bank = ivit.build_prompts(names, spec, templates=["a photo of a {}."], descriptions=tmp_path / "desc.yaml")
    engine = build_prompt_bank("text", names, text_encoder=spec, templates=["a photo of a {}."],
                               descriptions={"red": ["a ripe tomato.", "a fire engine."]})
    plain = ivit.build_prompts(names, spec, templates=["a photo of a {}."])
    torch.testing.assert_close(bank.features["text"], engine.features["text"])
    assert not torch.allclose(bank.features["text"][0], plain.features["text"][0])  # red: its sentences count
    torch.testing.assert_close(bank.features["text"][1], plain.features["text"][1])  # green: templates alone
