"""captioning.internals.atomic (the one "temporary name, then rename" helper) and captioning.internals.plugins (optional speed-ups)."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest

from captioning.internals import plugins
from captioning.internals.atomic import atomic_path, write_json, write_text


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json({"a": 1}, target)
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write('{"a": ')  # half written, then the writer dies
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}  # the old content, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left
    write_text("x", tmp_path / "t.txt")
    with atomic_path(tmp_path / "f.png", suffix=".png") as tmp:
        assert tmp.endswith(".png") and str(tmp_path) in tmp
        open(tmp, "wb").close()
    assert (tmp_path / "f.png").is_file()


def test_the_kit_finds_its_fast_path_plugin_and_it_can_be_turned_off(monkeypatch):
    fast = plugins.get("fast_path")
    assert fast is not None and fast.__name__ == "instructor.fastpath"  # declared in pyproject.toml
    monkeypatch.setenv(plugins.DISABLE_ENV, "off")
    assert plugins.get("fast_path") is None


def test_a_plugin_that_cannot_be_imported_is_skipped_with_a_warning(monkeypatch):
    broken = EntryPoint(name="speedup", value="no_such_module_here.fast", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "_declared", lambda name: iter([broken]))
    monkeypatch.setattr(plugins, "_loaded", {})
    with pytest.warns(UserWarning, match="plug-in 'speedup' .* could not be imported"):
        assert plugins.get("speedup") is None
