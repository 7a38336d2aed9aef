"""The demo page's limits, without a browser: class names counted and measured before the lock, uploads read as
images by the page itself (and deleted), prompts for new names kept in memory only, and the served page's gradio
settings (upload size, queue, temporary files), checked on a page served on the loopback."""

import hashlib
import struct
import threading
import zlib
from pathlib import Path

import pytest
from helpers import colour_folder, tiny_run
from typer.testing import CliRunner

import instruction_vit as ivit
import instruction_vit.prompts.bank as bank_module
from instruction_vit import app as page_module
from instruction_vit.app import (
    LRU,
    MAX_NAME_CHARS,
    MAX_NAMES,
    DemoModel,
    check_page_limits,
    parse_class_names,
    parse_file_size,
    upload_path,
)
from instruction_vit.cli import app as cli
from instruction_vit.errors import ConfigError, DataError

NEW = ["crimson", "navy", "lime"]
SECRET = "SECRET-TOKEN-4242"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip_dir):
    """A one-epoch run with text prompts from the tiny CLIP (prompt cache in ``cache``), a top-2+1 ranker."""
    root = tmp_path_factory.mktemp("page")
    colour_folder(root / "images", per_class=8)
    ivit.train(tiny_run(root / "images", tiny_clip_dir, root / "cache", "train.epochs=1", "prompts.select_k=2"),
               root / "run")
    return root


@pytest.fixture
def demo(run):
    return DemoModel.load(run / "run", "cpu")


def _upload(folder: Path, source: Path | bytes, name: str = "photo.png") -> Path:
    """A file laid out as gradio's /upload keeps it: ``FOLDER/<sha256 of its bytes>/NAME``."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    path = folder / hashlib.sha256(data).hexdigest() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class SpyLock:
    """A lock that counts how often it was taken."""

    def __init__(self):
        self.taken = 0
        self._lock = threading.Lock()

    def __enter__(self):
        self.taken += 1
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


@pytest.fixture
def spies(demo, monkeypatch):
    """The demo's lock, its classifier's prompt building and the bank's text encoding, each counting its calls."""
    calls = {"class_prompts": 0, "encode": 0}
    lock = SpyLock()
    demo._lock = lock
    class_prompts, encode = demo.classifier.class_prompts, bank_module.encode_class_texts

    def counted_prompts(*args, **kwargs):
        calls["class_prompts"] += 1
        return class_prompts(*args, **kwargs)

    def counted_encode(*args, **kwargs):
        calls["encode"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(demo.classifier, "class_prompts", counted_prompts)
    monkeypatch.setattr(bank_module, "encode_class_texts", counted_encode)
    return calls, lock


def test_1001_names_are_refused_before_the_lock_is_taken_and_before_anything_is_encoded(run, demo, spies, tmp_path):
    calls, lock = spies
    upload = _upload(tmp_path / "uploads", run / "images" / "red" / "0.png")
    names = [f"class {i}" for i in range(MAX_NAMES + 1)]
    with pytest.raises(ConfigError, match=f"{MAX_NAMES + 1} class names given; the page takes at most {MAX_NAMES}"):
        demo.answer(upload, "\n".join(names))
    with pytest.raises(ConfigError, match=f"{MAX_NAMES + 1} class names given"):
        demo.classify(demo.read_upload(upload), names)  # the Python entry point checks as well
    assert lock.taken == 0 and calls == {"class_prompts": 0, "encode": 0}
    assert len(parse_class_names(",".join(names[:MAX_NAMES]))) == MAX_NAMES  # the limit itself is accepted

    demo.answer(upload, ", ".join(NEW))  # the same page, within the limits: the lock is taken, the names encoded
    assert lock.taken == 1 and calls["class_prompts"] == 1 and calls["encode"] >= 1


def test_a_long_name_or_a_megabyte_of_text_is_refused_without_being_quoted(demo, spies):
    calls, lock = spies
    long = "x" * (MAX_NAME_CHARS + 1)
    with pytest.raises(ConfigError, match=f"class name 2 has {MAX_NAME_CHARS + 1} characters; the page takes at most "
                                          f"{MAX_NAME_CHARS} per name") as err:
        parse_class_names(f"red\n{long}")
    assert long not in str(err.value)
    with pytest.raises(ConfigError, match="class name 1 has"):
        demo.classify(None, [long])  # before the image is even looked at
    with pytest.raises(ConfigError, match="the class names are 1048576 characters long; the page takes at most") \
            as err:
        parse_class_names("y" * 2**20)
    assert "yyyy" not in str(err.value)
    assert parse_class_names("z" * MAX_NAME_CHARS) == ["z" * MAX_NAME_CHARS]
    with pytest.raises(ConfigError, match="must be text"):
        parse_class_names(["red"])
    check_page_limits(["a"] * MAX_NAMES)
    assert lock.taken == 0 and calls == {"class_prompts": 0, "encode": 0}


def _broken_png(quoted: bytes) -> bytes:
    """A PNG whose image data is cut short and followed by a chunk named ``quoted``: PIL's message on it quotes
    those bytes of the file."""
    def chunk(cid: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
    pixels = zlib.compress(b"\x00" * 14)
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", pixels[:5]) + chunk(quoted, SECRET.encode()) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("content", [f"{SECRET}: not an image at all\n".encode(), _broken_png(b"Q\x07Z\x07")],
                         ids=["text", "broken-png"])
def test_a_non_image_is_refused_with_a_message_that_quotes_none_of_it_and_deleted(demo, spies, tmp_path, content):
    calls, lock = spies
    upload = _upload(tmp_path / "uploads", content, "notes.png")
    with pytest.raises(DataError, match="the file 'notes.png' is not an image this page can read") as err:
        demo.answer(upload, ", ".join(NEW))
    message = str(err.value)
    assert SECRET not in message and "Q\\x07Z" not in message and "\x07" not in message
    assert str(tmp_path) not in message  # nor the server's folders
    assert not upload.exists() and not upload.parent.exists()  # deleted once read, image or not
    assert lock.taken == 0 and calls == {"class_prompts": 0, "encode": 0}


def test_an_upload_is_deleted_once_read_and_its_image_kept_for_the_next_names(run, demo, tmp_path):
    image = run / "images" / "red" / "0.png"
    upload = _upload(tmp_path / "uploads", image)
    first = demo.answer(upload, ", ".join(NEW))
    assert not upload.exists() and not upload.parent.exists()
    again = demo.answer(upload, "black, white")  # the same upload, other names: from memory, not from the file
    assert set(again.bars["score"]) == {"black", "white"} and set(first.bars["score"]) == set(NEW)
    predicted = demo.classifier.predict([image], classes=NEW, top_k=3)[0]
    assert first.bars["score"][predicted[0][0]] == pytest.approx(predicted[0][1])  # what ivit predict says
    upload = _upload(tmp_path / "uploads", image)  # the same image uploaded again: read from memory, deleted too
    demo.answer(upload, "red, green")
    assert not upload.exists()
    gone = tmp_path / "uploads" / ("0" * 64) / "gone.png"
    with pytest.raises(DataError, match="no longer on the server .* upload it again"):
        demo.answer(gone, "red")


def test_only_files_in_the_upload_folder_are_read(tmp_path):
    folder = tmp_path / "uploads"
    inside = folder / ("a" * 64) / "x.png"
    assert upload_path({"path": str(inside), "orig_name": "x.png"}, folder) == inside.resolve()
    for payload in ({"path": "/etc/passwd"}, {"path": str(folder / ".." / "run" / "last.safetensors")}, "/etc/hosts"):
        with pytest.raises(ConfigError, match="must be a file uploaded to this page"):
            upload_path(payload, folder)
    for payload in (None, {"path": None, "url": "data:image/png;base64,AAAA"}, {}):
        with pytest.raises(ConfigError, match="drop, paste or upload an image first"):
            upload_path(payload, folder)


def _files(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_new_class_names_write_no_file_into_the_prompt_cache_or_the_run(run, demo, tmp_path):
    cache, folder = Path(demo.classifier.config.prompts.cache_dir), run / "run"
    assert cache == run / "cache" and any(cache.iterdir())  # training wrote its bank there
    before = _files(cache, folder)
    upload = _upload(tmp_path / "uploads", run / "images" / "green" / "0.png")
    for names in (NEW, ["black", "white"], ["a cat", "a dog", "a boat"], NEW, ["teal", "olive"]):
        demo.answer(upload, ", ".join(names))
        demo.answer(upload, ", ".join(names), select=True)  # the top-K+1 ranker's text prompts too
    assert _files(cache, folder) == before
    assert demo._prompts.keys() == [("black", "white"), ("a cat", "a dog", "a boat"), ("crimson", "navy", "lime"),
                                    ("teal", "olive")]  # in memory instead, the most recently used last
    assert len(demo._ranker[1]) == 4


def test_the_lru_keeps_the_most_recently_used_and_stays_bounded(run, demo, tmp_path, monkeypatch):
    lru = LRU(3)
    for key in "abc":
        lru.put(key, key.upper())
    assert lru.get("a") == "A"  # read: now the most recently used
    lru.put("d", "D")
    assert lru.keys() == ["c", "a", "d"] and "b" not in lru  # b, the least recently used, went (FIFO would drop a)
    assert lru.remember("c", lambda: pytest.fail("made again")) == "C" and lru.keys() == ["a", "d", "c"]
    for i in range(100):
        lru.put(i, i)
    assert len(lru) == 3

    weighed = LRU(10, budget=10, weigh=len)  # bounded by weight as well: the decoded images' pixels
    weighed.put("x", "xxxx")
    weighed.put("y", "yyyy")
    weighed.get("x")
    weighed.put("z", "zzzz")
    assert weighed.keys() == ["x", "z"]
    weighed.put("huge", "h" * 11)  # heavier than the whole budget: not kept, nothing else dropped for it
    assert weighed.keys() == ["x", "z"]

    demo._prompts = LRU(2)  # the page's prompt sets: the same order of use
    upload = _upload(tmp_path / "uploads", run / "images" / "blue" / "0.png")
    for names in ("crimson, navy", "black, white", "crimson, navy", "teal, olive"):
        demo.answer(upload, names)
    assert demo._prompts.keys() == [("crimson", "navy"), ("teal", "olive")]
    assert page_module.PROMPT_SETS == 16 and len(DemoModel(demo.classifier)._prompts.keys()) == 0


def test_file_sizes_read_as_gradio_counts_them():
    assert parse_file_size("20MB") == 20 * 2**20 == parse_file_size("20 mb")
    assert parse_file_size("500KB") == 500 * 1024 and parse_file_size("1GB") == 2**30 and parse_file_size(4096) == 4096
    for bad in ("twenty", "20 XB", "-1MB", "0", "1.5MB"):
        with pytest.raises(ConfigError, match="file size"):
            parse_file_size(bad)


def test_serve_reads_its_limits_before_loading_the_run_and_its_help_states_them(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(tmp_path / "nope"), "--max-file-size", "lots"])
    assert result.exit_code == 2 and "cannot read the file size 'lots'" in result.output, result.output
    result = runner.invoke(cli, ["serve", str(tmp_path / "nope"), "--queue-size", "0"])
    assert result.exit_code == 2 and "queue-size" in result.output
    help_text = " ".join(runner.invoke(cli, ["serve", "--help"], terminal_width=200).output.split())
    for said in ("--max-file-size", "[default: 20MB]", "--queue-size", "[default: 32]", "at most 1000 class names",
                 "at most 200 characters"):
        assert said in help_text, said
    assert (page_module.MAX_FILE_SIZE, page_module.QUEUE_SIZE, MAX_NAMES, MAX_NAME_CHARS) == ("20MB", 32, 1000, 200)


# -- the page served on the loopback -----------------------------------------------------------
@pytest.fixture
def served(run, tmp_path, monkeypatch):
    """``serve`` on a free loopback port with a 4 KB upload limit and a queue of 3, gradio's files in a folder of
    the test's own; yields (page, its url, that folder)."""
    pytest.importorskip("gradio", reason="the demo page needs gradio, the app extra: pip install -e '.[app]'")
    import socket

    uploads = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = page_module.serve(run / "run", port=port, device="cpu", block=False, max_file_size="4KB", queue_size=3)
    try:
        yield page, f"http://127.0.0.1:{port}/", uploads
    finally:
        page.close()


def _classify_fn(page):
    return next(fn for fn in page.fns.values() if fn.api_name == "classify")


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_the_served_page_has_gradios_limits_set(served):
    page, url, uploads = served
    assert page.max_file_size == 4096  # --max-file-size reached gradio's launch
    assert page._queue.max_size == 3  # --queue-size reached its queue
    fn = _classify_fn(page)
    assert fn.concurrency_limit == 1 and page._queue.default_concurrency_limit == 1
    assert fn.preprocess is False  # gradio does not open the upload itself: the page reads it
    assert page.delete_cache == page_module.SWEEP and page.show_error is False


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_the_served_page_refuses_big_uploads_and_non_images_and_writes_nothing(run, served, capfd):
    import httpx
    from gradio_client import Client, handle_file

    page, url, uploads = served
    cache, folder = run / "cache", run / "run"
    before = _files(cache, folder)
    big = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", b"\0" * 8192, "image/png")}, timeout=30)
    assert big.status_code == 413 and "maximum allowed size of 4096 bytes" in big.text
    assert not _files(uploads)  # refused while it arrived: nothing kept

    client = Client(url, verbose=False, analytics_enabled=False)
    notes = uploads.parent / "notes.png"
    notes.write_bytes(f"{SECRET}\n".encode() * 10)
    with pytest.raises(Exception, match="not an image this page can read") as err:
        client.predict(handle_file(str(notes)), "red, blue", False, api_name="/classify")
    assert SECRET not in str(err.value)
    with pytest.raises(Exception, match=f"{MAX_NAMES + 1} class names given"):
        client.predict(handle_file(str(run / "images" / "red" / "0.png")),
                       ",".join(f"c{i}" for i in range(MAX_NAMES + 1)), False, api_name="/classify")
    for names in (NEW, ["black", "white"], ["teal", "olive", "navy"]):
        out = client.predict(handle_file(str(run / "images" / "red" / "1.png")), ", ".join(names), False,
                             api_name="/classify")
        assert {c["label"] for c in out[2]["value"]["confidences"]} == set(names)  # the score output
    client.close()
    assert _files(cache, folder) == before
    # every upload read was deleted; the one sent with too many names stays for a next try (gradio's sweep takes it)
    assert [Path(f).name for f in _files(uploads)] == ["0.png"]
    console = capfd.readouterr()
    assert "Traceback" not in console.out + console.err


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_flood_is_told_the_page_is_busy(run, monkeypatch, served):
    from gradio_client import Client, handle_file

    page, url, uploads = served
    started, release = threading.Event(), threading.Event()
    answer = DemoModel.answer

    def slow(self, *args, **kwargs):  # the model busy until the test says
        started.set()
        release.wait(30)
        return answer(self, *args, **kwargs)

    monkeypatch.setattr(DemoModel, "answer", slow)
    client = Client(url, verbose=False, analytics_enabled=False)
    image = handle_file(str(run / "images" / "red" / "0.png"))
    try:
        running = client.submit(image, "red, blue", False, api_name="/classify")
        assert started.wait(30)
        waiting = [client.submit(image, "red, blue", False, api_name="/classify") for _ in range(3)]  # the queue: 3
        for _ in range(600):  # until the three are in the queue
            if len(page._queue) >= 3:
                break
            threading.Event().wait(0.05)
        with pytest.raises(Exception, match="[Qq]ueue is full"):
            client.submit(image, "red, blue", False, api_name="/classify").result(timeout=30)
    finally:
        release.set()
    assert running.result(timeout=60)[2]["visible"] and all(job.result(timeout=60) for job in waiting)
    client.close()
