"""The server for real: uvicorn on a free loopback port in a thread. Graceful shutdown finishes the request in
flight; the page in headless Chromium uploads a synthetic DICOM and shows probabilities and the heatmap."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from mammoclip.serve import build_server, create_app
from tests.browser import find_browser
from tests.serve.conftest import Served, config

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live(app, cfg) -> Iterator[tuple[str, object]]:  # noqa: ANN001
    server = build_server(cfg, app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{cfg.host}:{cfg.port}"
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield url, server
    finally:
        server.should_exit = True
        thread.join(30)


def test_graceful_shutdown_finishes_the_request_in_flight(served: Served, engine) -> None:  # noqa: ANN001
    cfg = config(served, port=_free_port())
    app = create_app(cfg, engine)
    real = engine.embed_images_sync
    entered = threading.Event()

    def slow(batch):  # noqa: ANN001, ANN202
        entered.set()
        time.sleep(1.0)
        return real(batch)

    result: dict[str, object] = {}
    with live(app, cfg) as (url, server):
        app.state.server.batcher.forward = slow

        def call() -> None:
            r = httpx.post(f"{url}/v1/embed", content=served.dicoms[0].read_bytes(),
                           headers={"content-type": "application/dicom"}, timeout=30)
            result["status"], result["dim"] = r.status_code, len(r.json()["image"]["embedding"])

        client = threading.Thread(target=call)
        client.start()
        assert entered.wait(20)
        server.should_exit = True  # what SIGTERM does
        client.join(30)
    assert result == {"status": 200, "dim": engine.model.embed_dim}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.slow
@pytest.mark.browser
def test_page_in_chromium_shows_probabilities_and_heatmap(served: Served, engine, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cfg = config(served, port=_free_port())
    chromium, driver_bin = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="mammoclip-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1100,700"):
        opts.add_argument(flag)
    env = {"HOME": profile, "XDG_CONFIG_HOME": f"{profile}/config", "XDG_CACHE_HOME": f"{profile}/cache"}
    with live(create_app(cfg, engine), cfg) as (url, _):
        expected = httpx.post(f"{url}/v1/zeroshot", content=served.dicoms[1].read_bytes(),
                              headers={"content-type": "application/dicom"}).json()

        driver = webdriver.Chrome(service=Service(executable_path=driver_bin, env={**os.environ, **env}), options=opts)
        try:
            driver.get(url + "/")
            WebDriverWait(driver, 20).until(lambda d: "mammoclip-tiny" in d.find_element(By.ID, "model-info").text)
            driver.find_element(By.ID, "file").send_keys(str(served.dicoms[1]))
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                            in ("done", "error"))
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
                driver.find_element(By.ID, "status").text
            shown = {}
            for task in driver.find_elements(By.CSS_SELECTOR, "#probs .task"):
                for bar in task.find_elements(By.CSS_SELECTOR, ".bar"):
                    shown[(task.get_attribute("data-task"), bar.get_attribute("data-label"))] = float(
                        bar.find_element(By.CSS_SELECTOR, ".value").text)
            want = {(t["task"], c["name"]): c["probability"] for t in expected["tasks"] for c in t["classes"]}
            assert shown.keys() == want.keys()
            assert all(abs(shown[k] - want[k]) <= 5e-4 + 1e-9 for k in want)
            size = driver.execute_script("const i = document.getElementById('mammogram');"
                                         "return [i.naturalHeight, i.naturalWidth];")
            assert size == [128, 80]
            heat = driver.execute_script(
                "const c = document.getElementById('heat'); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return [c.dataset.attribute, n, c.width];")
            assert heat[0] == "mass" and heat[1] > 100 and heat[2] == 80
            options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#attribute option")]
            assert options == ["mass", "calcification"]
            assert len(driver.find_elements(By.CSS_SELECTOR, "#boxes rect")) >= 1
            # The test suite never writes into the repository: the docs' screenshot is refreshed only on request.
            update = os.environ.get("MAMMOCLIP_UPDATE_DOCS_IMAGES") == "1"
            shot = ROOT / "docs" / "img" / "serve.png" if update else tmp_path / "serve.png"
            driver.save_screenshot(str(shot))
            from PIL import Image

            Image.open(shot).convert("RGB").quantize(96).save(shot, optimize=True)  # small for the docs
            assert shot.stat().st_size > 10_000
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
