"""app.py, the local web page, in a real browser: Debian's chromium (`apt-get install chromium`; .ci/run installs
it) driven by Playwright's Python client, with no browser download. The server runs as a subprocess on a free
port of 127.0.0.1. Its screenshot goes to the test's temporary folder, or with DDFFNET_UPDATE_FIGURES=1 to the
README's docs/figures/app.png (so that a test run leaves the repository clean)."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import app
from engine.evaluate import to_8bit
from models import load_model, predict
from models.inference import input_spec
from models.shipped import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DDFFNET_CHROMIUM", "/usr/bin/chromium"))
README_SCREENSHOT = ROOT / "docs" / "figures" / "app.png"
READY_SECONDS = 120  # the server's start (importing torch and Gradio, loading the model) on a busy machine
_spec = importlib.util.spec_from_file_location("test_script_app", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def line_of_test_py(path: Path) -> str:
    """What test.py --images prints about `path` after 'test.py: error: ' (the part naming the file)."""
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        test_script.main(["--images", str(path), "--out", str(path.parent / "out"), "--workers", "0"])
    line = stderr.getvalue().strip().splitlines()[-1]
    return line[line.index(f"{path}:"):].replace(str(path), path.name)


@pytest.fixture()
def server(tmp_path):
    """app.py serving on a free port of 127.0.0.1 (only the shipped model: an empty checkpoint folder); stopped
    after the test."""
    port = free_port()
    (tmp_path / "no_checkpoints").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--checkpoint-dir",
                                str(tmp_path / "no_checkpoints")], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(READY_SECONDS * 4):
            if process.poll() is not None:
                pytest.fail(f"app.py stopped with code {process.returncode}: {(tmp_path / 'app.log').read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        break
            time.sleep(0.25)
        else:
            pytest.fail(f"app.py did not answer on {url}: {(tmp_path / 'app.log').read_text()}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    with socket.socket() as probe:  # the port is free again: the server is gone
        probe.bind(("127.0.0.1", port))


@pytest.fixture()
def browser():
    if not CHROMIUM.is_file():
        if os.environ.get("DDFFNET_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): the browser test does not run")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


def shown_picture(page, elem_id: str) -> np.ndarray:
    """The pixels of the picture the page shows in #elem_id, as the browser fetched them."""
    src = page.locator(f"#{elem_id} img").get_attribute("src")
    with Image.open(io.BytesIO(page.request.get(src).body())) as picture:
        return np.asarray(picture.convert("L"))


def assert_close_pictures(shown: np.ndarray, expected: np.ndarray) -> None:
    """The page's picture is `expected` but for at most 0.1 % of its pixels: the server computes the map with
    its own thread count, which can move a value across a rounding boundary (or a mask's threshold)."""
    assert shown.shape == expected.shape
    assert (shown != expected).mean() <= 0.001, (shown != expected).mean()


def test_the_page_shows_predicts_map_and_refuses_a_bad_file_in_one_line(server, browser, tmp_path):
    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    shipped = load_model(SHIPPED_CHECKPOINT).eval()
    in_focus = predict(shipped, photo)

    page = browser.new_page(viewport={"width": 1400, "height": 820})
    page.goto(server)
    page.locator("#upload input[type=file]").set_input_files(str(photo))
    page.wait_for_function("document.querySelector('#status').innerText.includes('chelsea.png')")
    page.wait_for_selector("#map img")
    assert_close_pictures(shown_picture(page, "map"), to_8bit(torch.from_numpy(in_focus)))
    assert_close_pictures(shown_picture(page, "mask"), (in_focus > 0.5).astype(np.uint8) * 255)
    described = f"dffnet / {shipped.config['backbone']} at {input_spec(shipped).img_size} px took"
    assert described in page.locator("#status").inner_text()
    page.wait_for_timeout(500)  # the pictures' fade-in
    screenshot = README_SCREENSHOT if os.environ.get("DDFFNET_UPDATE_FIGURES") == "1" else tmp_path / "app.png"
    partial = screenshot.with_name(f".{screenshot.name}.partial.png")
    page.screenshot(path=str(partial), full_page=True)
    os.replace(partial, screenshot)  # never a half-written figure
    assert Image.open(screenshot).size[0] > 0

    mask_src = page.locator("#mask img").get_attribute("src")
    page.locator("#threshold input[type=number]").fill("0.9")
    page.locator("#threshold input[type=number]").press("Enter")
    page.wait_for_function(f"document.querySelector('#mask img').src != {mask_src!r}")
    assert_close_pictures(shown_picture(page, "mask"), (in_focus > 0.9).astype(np.uint8) * 255)

    for name, content in (("notes.txt", "a shopping list\n"), ("broken.png", "not a picture")):
        bad = tmp_path / name
        bad.write_text(content)
        page.goto(server)  # a fresh page: its upload box is empty
        page.locator("#upload input[type=file]").set_input_files(str(bad))
        page.wait_for_function(f"document.querySelector('#status').innerText.includes('{name}')")
        status = page.locator("#status").inner_text().strip()
        assert status == f"error: {line_of_test_py(bad)}"
        assert "\n" not in status and "Traceback" not in page.content()
        assert page.locator("#map img").count() == 0


def test_app_refuses_a_port_out_of_range():
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stderr(io.StringIO()) as stderr:
        app.parse_args(["--port", "70000"])
    assert stop.value.code == 2 and "--port must be in 1-65535, got 70000" in stderr.getvalue()
