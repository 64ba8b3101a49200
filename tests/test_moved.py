"""The old ``mammoclip.data.*`` import paths of moved modules: same module objects, one FutureWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from mammoclip import _moved


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_old_path_is_the_new_module_and_warns(old: str, new: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=rf"{old} moved to {new}; the old path stops working in mammoclip 0\.2"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new


def test_submodules_and_from_imports_follow_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mammoclip.data.synthetic", "mammoclip.data.synthetic.cohort"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.warns(FutureWarning, match="moved to mammoclip.synthetic") as record:
        from mammoclip.data.synthetic.cohort import generate_cohort
    # one warning for the package, one for the sub-module
    assert [str(w.message).split(";")[0] for w in record] == [
        "mammoclip.data.synthetic moved to mammoclip.synthetic",
        "mammoclip.data.synthetic.cohort moved to mammoclip.synthetic.cohort"]
    from mammoclip.synthetic.cohort import generate_cohort as current

    assert generate_cohort is current
    monkeypatch.delitem(sys.modules, "mammoclip.data.dicom", raising=False)
    with pytest.warns(FutureWarning):
        from mammoclip.data.dicom import _read_dataset  # noqa: F401  (private names follow too)


def test_names_that_did_not_move_are_left_alone() -> None:
    assert _moved.new_name("mammoclip.data.manifest") is None
    assert _moved.new_name("mammoclip.data.dicomweb") is None  # a prefix of a name is not the name
    assert _moved.new_name("mammoclip.data.text_stats") == "mammoclip.text.stats"


def test_fresh_interpreter_names_the_importing_file(tmp_path) -> None:
    """The warning points at the user's line, not at the import machinery."""
    script = tmp_path / "user_code.py"
    script.write_text("import mammoclip.data.reports\n")
    out = subprocess.run([sys.executable, "-W", "always::FutureWarning", str(script)], capture_output=True,
                         text=True, timeout=120, check=True)
    assert "user_code.py:1: FutureWarning: mammoclip.data.reports moved to mammoclip.text.reports" in out.stderr
