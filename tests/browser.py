"""Open an HTML page in headless Chromium (Debian's package, driven by selenium) and inspect it.

`make test` installs chromium + chromium-driver when they are missing.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PageCheck:
    title: str
    images_total: int
    images_broken: list[str]
    links_broken: list[str]
    tables: dict[str, list[list[str]]]  # table id -> rows of cell texts (header row first)


_JS = """
const imgs = Array.from(document.images);
const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
const tables = {};
for (const t of document.querySelectorAll('table[id]')) {
  tables[t.id] = Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()));
}
return {title: document.title, n: imgs.length, broken: broken, links: links, tables: tables};
"""


def check_page(path: Path, screenshot: Path | None = None) -> PageCheck:
    """Load ``path`` in a real browser and report broken images/links and the tables' contents."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, "chromium and chromedriver are needed (make test installs them)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="mammoclip-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,2000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    try:
        driver.get(Path(path).resolve().as_uri())
        info = driver.execute_script(_JS)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    broken_links = []
    for href in info["links"]:
        if href.startswith("file://"):
            target = Path(href[len("file://"):].split("#")[0])
            if not target.exists():
                broken_links.append(href)
    return PageCheck(info["title"], int(info["n"]), list(info["broken"]), broken_links, dict(info["tables"]))
