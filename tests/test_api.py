"""The package's top level is the library's face: the README's API example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

from helpers import colour_folder

import instruction_vit as ivit

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_api_example_trains_loads_and_predicts_new_classes(tmp_path, monkeypatch):
    code = re.search(r"## The Python API\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    colour_folder(tmp_path / "images", per_class=12)
    monkeypatch.chdir(tmp_path)
    printed = []
    scope: dict = {"print": lambda *args: printed.append(args)}
    exec(compile(code, str(README), "exec"), scope)
    encoders, datasets, experiments = printed[0]
    assert "conse" in encoders and "folder" in datasets and "table1" in experiments
    classes, known = printed[1]
    assert classes == ["blue", "green", "red"] and len(known[0]) == 2
    (new,) = printed[2]
    assert {name for name, _ in new[0]} == {"crimson", "navy", "lime"}
    assert abs(sum(p for _, p in new[0]) - 1) < 1e-5
    assert (tmp_path / "runs" / "tiny" / "results.json").is_file()


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
