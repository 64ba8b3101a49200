"""Where the browser test finds chromium, and the in-repo installer's no-op path (no network, fast)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import browser

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_browser.sh"


def _fake_install(root: Path, names: tuple[str, ...] = ("chromium", "chromedriver")) -> Path:
    """Executables that answer ``--version``, standing in for one chromium install."""
    root.mkdir(parents=True)
    for name in names:
        exe = root / name
        exe.write_text(f"#!/bin/sh\necho '{name} fake'\n")
        exe.chmod(0o755)
    return root


@pytest.fixture
def places(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A system PATH holding only a fake install, and a fake .venv/browser/bin; no override variables."""
    system, local = tmp_path / "system", tmp_path / "local"
    monkeypatch.setenv("PATH", str(system))
    monkeypatch.setattr(browser, "LOCAL_BIN", local)
    monkeypatch.delenv("MAMMOCLIP_CHROMIUM", raising=False)
    monkeypatch.delenv("MAMMOCLIP_CHROMEDRIVER", raising=False)
    return system, local


def test_system_path_comes_before_the_in_repo_copy(places):
    system, local = places
    _fake_install(system), _fake_install(local)
    assert browser.find_browser() == (str(system / "chromium"), str(system / "chromedriver"))


def test_a_half_install_on_path_is_not_mixed_with_the_in_repo_copy(places):
    system, local = places
    _fake_install(system, ("chromium",)), _fake_install(local)
    assert browser.find_browser() == (str(local / "chromium"), str(local / "chromedriver"))


def test_env_chromium_brings_its_sibling_driver(places, monkeypatch):
    system, local = places
    _fake_install(system), _fake_install(local)
    monkeypatch.setenv("MAMMOCLIP_CHROMIUM", str(local / "chromium"))
    assert browser.find_browser() == (str(local / "chromium"), str(local / "chromedriver"))


def test_nothing_found_says_how_to_get_it(places):
    with pytest.raises(AssertionError, match="make browser-deps"):
        browser.find_browser()


def test_installer_does_nothing_when_path_has_a_working_pair(tmp_path):
    system = _fake_install(tmp_path / "system")
    dest = tmp_path / "browser"
    env = {**os.environ, "PATH": f"{system}{os.pathsep}{os.environ['PATH']}", "MAMMOCLIP_BROWSER_DIR": str(dest)}
    env.pop("FORCE_LOCAL_BROWSER", None)
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not dest.exists()
