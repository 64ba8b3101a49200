"""Open an HTML page in headless Chromium (Debian's package, driven by selenium) and inspect it.

The browser is found by :func:`find_browser`: explicit environment variables, then the system PATH, then
the copy that `make test` (scripts/install_browser.sh) unpacks under .venv/browser when the system has
none, so that nothing is installed outside the repository.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Where scripts/install_browser.sh writes its chromium and chromedriver wrappers.
LOCAL_BIN = Path(__file__).resolve().parents[1] / ".venv" / "browser" / "bin"


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


def _on_path() -> tuple[str | None, str | None]:
    """The system's chromium (Debian names it ``chromium``, Ubuntu ``chromium-browser``) on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def _in_repo() -> tuple[str | None, str | None]:
    """The wrappers around the .debs unpacked by scripts/install_browser.sh."""
    return shutil.which("chromium", path=str(LOCAL_BIN)), shutil.which("chromedriver", path=str(LOCAL_BIN))


#: Installs to look in, in order; each is taken whole, so chromium and its driver share a version.
BROWSER_SOURCES: tuple[Callable[[], tuple[str | None, str | None]], ...] = (_on_path, _in_repo)


def find_browser() -> tuple[str, str]:
    """Locate chromium and a chromedriver of the same install.

    ``MAMMOCLIP_CHROMIUM`` and ``MAMMOCLIP_CHROMEDRIVER`` override either half; a chromedriver next to
    ``MAMMOCLIP_CHROMIUM`` wins over one from elsewhere (so pointing it at .venv/browser/bin/chromium is enough
    to test the in-repo copy on a machine that also has a system chromium).

    Returns:
        The paths of chromium and chromedriver.

    Raises:
        AssertionError: neither the environment, the PATH nor .venv/browser provides both.
    """
    pair = next(((c, d) for c, d in (source() for source in BROWSER_SOURCES) if c and d), (None, None))
    chromium = os.environ.get("MAMMOCLIP_CHROMIUM") or pair[0]
    sibling = Path(chromium).with_name("chromedriver") if os.environ.get("MAMMOCLIP_CHROMIUM") else None
    driver = os.environ.get("MAMMOCLIP_CHROMEDRIVER") or (
        str(sibling) if sibling is not None and sibling.is_file() else pair[1]
    )
    assert chromium and driver, (
        "chromium and chromedriver are needed: run `make browser-deps` (unpacks them under .venv/browser) "
        "or set MAMMOCLIP_CHROMIUM and MAMMOCLIP_CHROMEDRIVER"
    )
    return chromium, driver


def check_page(path: Path, screenshot: Path | None = None) -> PageCheck:
    """Load ``path`` in a real browser and report broken images/links and the tables' contents."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="mammoclip-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,2000"):
        opts.add_argument(flag)
    # Chromium writes crash-report settings under $XDG_CONFIG_HOME and dconf state under $XDG_CACHE_HOME
    # whatever --user-data-dir says: point HOME and both at the throwaway profile (nothing outside the
    # repository but the pip cache may be written, issue #8).
    env = {**os.environ, "HOME": profile, "XDG_CONFIG_HOME": f"{profile}/config",
           "XDG_CACHE_HOME": f"{profile}/cache"}
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin, env=env), options=opts)
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
