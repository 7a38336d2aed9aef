"""The demo page (``ivit serve``): what it computes, and the page itself driven in a real browser (Debian's chromium
through playwright), whose top label must be ``ivit predict``'s for the same image and class names."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_folder, tiny_run
from PIL import Image
from typer.testing import CliRunner

import instruction_vit as ivit
from instruction_vit.app import DemoModel, parse_class_names
from instruction_vit.cli import app as cli
from instruction_vit.errors import ConfigError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "demo-page.png"
NEW = ["crimson", "navy", "lime"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip_dir):
    """A one-epoch run with text prompts from the tiny CLIP, on colour images."""
    root = tmp_path_factory.mktemp("app")
    colour_folder(root / "images", per_class=8)
    ivit.train(tiny_run(root / "images", tiny_clip_dir, root / "cache", "train.epochs=1", "prompts.select_k=2"),
               root / "run")
    return root


def test_class_names_one_per_line_or_comma_separated():
    assert parse_class_names("red\n blue, green ,\n\n") == ["red", "blue", "green"]
    with pytest.raises(ConfigError, match="given twice"):
        parse_class_names("red, blue\nred")
    with pytest.raises(ConfigError, match="no class names"):
        parse_class_names(" ,\n")


def test_every_output_for_the_checkpoint_classes_only_the_score_for_new_names(run):
    demo = DemoModel.load(run / "run", "cpu")
    image = Image.open(run / "images" / "red" / "0.png")
    own = demo.classify(image, demo.classes)
    assert set(own.bars) == {"combined", "head", "score"} and all(own.bars.values())
    assert own.ranked_by == "combined" and "the checkpoint's classes and its text prompts from open_clip" in own.note
    assert "top-2+1" in own.note  # the run's select_k: said, and that this page reads all prompts
    predicted = demo.classifier.predict([image])[0]
    assert own.top == predicted[0][0] and own.bars["combined"][predicted[0][0]] == pytest.approx(predicted[0][1])

    new = demo.classify(image, NEW)
    assert new.bars["head"] is None and new.bars["combined"] is None  # the head knows only the training classes
    assert set(new.bars["score"]) == set(NEW) and new.ranked_by == "score"
    assert "head knows only the 3 training classes" in new.note
    predicted = demo.classifier.predict([image], classes=NEW, top_k=3)[0]
    assert [n for n, _ in predicted] == list(new.bars["score"])
    assert new.bars["score"][predicted[0][0]] == pytest.approx(predicted[0][1])


def test_top_k_plus_one_prompts_as_the_run_evaluates(run):
    demo = DemoModel.load(run / "run", "cpu")
    image, names = Image.open(run / "images" / "red" / "0.png"), [*NEW, "black"]
    assert demo.select_k == 2
    every, selected = demo.classify(image, names), demo.classify(image, names, select=True)
    # 2 of 4 prompts read, the other 2 classes share the averaged token: equal probability, unlike with all prompts
    low = sorted(selected.bars["score"].values())[:2]
    assert low[0] == pytest.approx(low[1], rel=1e-5)
    assert sorted(every.bars["score"].values())[0] != pytest.approx(sorted(every.bars["score"].values())[1], rel=1e-5)
    assert "Top-2+1 prompts" in selected.note and "Top-2+1" not in every.note


def test_without_gradio_the_page_says_how_to_install_it(run, monkeypatch):
    from instruction_vit.app import build_page

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'gradio>=6.31,<7' \(the app extra; in a checkout: pip install -e '\.\[app\]'\)"):
        build_page(DemoModel.load(run / "run", "cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until the page answers at ``url`` and the command has printed that address."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            pytest.fail(f"ivit serve ended with status {server.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and f"{url} (Ctrl-C stops it)" in log.read_text():
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"ivit serve did not answer at {url} within {timeout} s: {log.read_text()}")


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_the_page_in_a_browser_ranks_new_class_names_as_ivit_predict(run, tmp_path):
    pytest.importorskip("gradio", reason="the demo page needs gradio, the app extra: pip install -e '.[app]'")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium) to drive the page in")
    port, image = _free_port(), run / "images" / "red" / "0.png"
    url = f"http://127.0.0.1:{port}/"
    big, notes = tmp_path / "big.png", tmp_path / "notes.png"  # a 120 KB image; a text file named as an image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)
    notes.write_bytes(b"SECRET: not an image\n" * 20)
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "instruction_vit", "serve", str(run / "run"), "--port",
                                   str(port), "--device", "cpu", "--max-file-size", "32KB"], stdout=out,
                                  stderr=subprocess.STDOUT, env=env)
    try:
        runner = CliRunner()  # ivit predict, while the server starts
        own = runner.invoke(cli, ["predict", str(run / "run"), str(image), "--device", "cpu"])
        new = runner.invoke(cli, ["predict", str(run / "run"), str(image), "--classes", ",".join(NEW),
                                  "--device", "cpu"])
        assert own.exit_code == 0 and new.exit_code == 0, own.output + new.output
        predict_top = {"own": own.output.split(": ")[-1].split()[0], "new": new.output.split(": ")[-1].split()[0]}
        assert predict_top["new"] in NEW

        _wait_until_up(url, server, log)  # ... and prints its address
        requested = []
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                page.on("request", lambda request: requested.append(request.url))
                page.goto(url)
                classes = page.locator("#ivit-classes textarea")
                assert parse_class_names(classes.input_value()) == ["blue", "green", "red"]  # pre-filled
                page.locator("#ivit-image input[type=file]").set_input_files(str(image))
                page.locator("#ivit-image img").first.wait_for()  # uploaded

                page.locator("#ivit-classify").click()  # the checkpoint's classes: every output, combined ranks
                combined = page.locator("#ivit-combined [data-testid=label-output-value]")
                sync_api.expect(combined).to_have_text(re.compile("red|green|blue"), timeout=30_000)
                assert combined.inner_text() == predict_top["own"]
                sync_api.expect(page.locator("#ivit-head")).to_be_visible()

                classes.fill(", ".join(NEW))  # new names: only the score output applies
                page.locator("#ivit-classify").click()
                score = page.locator("#ivit-score [data-testid=label-output-value]")
                sync_api.expect(score).to_have_text(re.compile("|".join(NEW)), timeout=30_000)
                assert score.inner_text() == predict_top["new"]
                sync_api.expect(page.locator("#ivit-head")).to_be_hidden()
                sync_api.expect(page.locator("#ivit-combined")).to_be_hidden()
                assert "Ranked by the score output" in page.locator("#ivit-note").inner_text()
                shot = SCREENSHOT if os.environ.get("IVIT_UPDATE_SCREENSHOT") == "1" else tmp_path / "demo-page.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000

                # the limits, as a visitor meets them: each a message on the page, none a traceback on the console
                toast = page.locator("[data-testid=toast-body]")
                upload = page.locator("#ivit-image input[type=file]")
                upload.set_input_files(str(big))  # over --max-file-size: refused before it is sent
                sync_api.expect(toast.last).to_contain_text("exceed the maximum allowed size", timeout=30_000)
                page.reload()
                page.locator("#ivit-image input[type=file]").set_input_files(str(notes))
                page.locator("#ivit-classify").click()
                sync_api.expect(toast.last).to_contain_text("'notes.png' is not an image this page can read",
                                                            timeout=30_000)
                assert "SECRET" not in toast.last.inner_text()
            finally:
                browser.close()
        outside = sorted({u for u in requested if not u.startswith(url) and not u.startswith(("data:", "blob:"))})
        assert not outside, f"the page fetched from elsewhere: {outside[:5]}"
        console = log.read_text()
        assert "Traceback" not in console and "refused a request: the file 'notes.png' is not an image" in console
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_serve_ends_in_one_clear_line_for_a_missing_run_or_a_busy_port(run, tmp_path):
    pytest.importorskip("gradio", reason="the demo page needs gradio, the app extra: pip install -e '.[app]'")
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not found" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(cli, ["serve", str(run / "run"), "--port", str(port), "--device", "cpu"])
    assert result.exit_code == 2 and f"cannot serve on 127.0.0.1:{port}" in result.output, result.output
