"""In a notebook or a script, where nobody set up logging, ``ivit.train`` shows what it reads, one line per long step
and each epoch's line on stderr; a caller's own logging set-up is left to decide, and nothing stays attached."""

import contextlib
import logging

import pytest
from helpers import colour_folder, tiny_run

import instruction_vit as ivit


@contextlib.contextmanager
def fresh_logging():
    """Logging as a new interpreter has it: no handler on the root logger (pytest's, added for each test phase, are
    set aside inside the block) nor on the library's logger (the ``ivit`` command, driven by other tests in this
    process, adds its own), no levels."""
    root, library = logging.getLogger(), logging.getLogger("instruction_vit")
    saved = root.handlers[:], root.level, library.handlers[:], library.level, library.propagate
    root.handlers[:], library.handlers[:] = [], []
    root.setLevel(logging.WARNING)
    library.setLevel(logging.NOTSET)
    library.propagate = True
    try:
        yield library
    finally:
        root.handlers[:], library.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        library.setLevel(saved[3])
        library.propagate = saved[4]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("shown") / "images", per_class=8)


def test_train_shows_its_lines_where_nothing_is_configured(images, tiny_clip_dir, tmp_path, capsys):
    with fresh_logging() as library:
        for run in ("run", "run2"):  # the second call too: open_clip's logging.info set up a root handler meanwhile
            ivit.train(tiny_run(images, tiny_clip_dir, tmp_path / "cache", "train.epochs=1"), tmp_path / run)
            err = capsys.readouterr().err.splitlines()
            assert any(line.startswith("data: folder at ") for line in err), err
            assert any(line.startswith("prompts: text, 3 classes") for line in err), err
            assert "epoch 1/1 ..." in err  # the long step, as it starts
            assert any(line.startswith("epoch 1: loss ") for line in err), err
            assert any(line.startswith("test top-1 of the best epoch (1): head ") and
                       line.endswith(f"{run}/results.json") for line in err), err
            assert not [line for line in err if "instruction_vit" in line], err  # each line once, as written
        assert library.handlers == [] and library.level == logging.NOTSET and library.propagate  # all restored


def test_a_logging_set_up_of_the_callers_own_decides(images, tiny_clip_dir, tmp_path, capsys):
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    with fresh_logging():
        logging.getLogger().addHandler(Collect())
        logging.getLogger().setLevel(logging.INFO)
        ivit.train(tiny_run(images, tiny_clip_dir, tmp_path / "cache", "train.epochs=1"), tmp_path / "run")
    assert capsys.readouterr().err == ""  # not shown a second time on stderr
    assert any(line.startswith("data: folder at ") for line in seen) and "epoch 1/1 ..." in seen


def test_warnings_still_reach_the_callers_handlers_and_a_chosen_level_keeps_the_library_quiet(capsys):
    from instruction_vit.progress import shown_by_default

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("instruction_vit.somewhere")
    with fresh_logging() as library:
        logging.getLogger().addHandler(Collect())  # a root handler at Python's default level (WARNING)
        with shown_by_default():
            log.info("an info line")
            log.warning("a warning")
        assert capsys.readouterr().err == "an info line\n" and seen == ["a warning"]
        library.setLevel(logging.WARNING)  # the caller keeps the library quiet
        with shown_by_default():
            log.info("not shown")
        assert capsys.readouterr().err == "" and seen == ["a warning"]
