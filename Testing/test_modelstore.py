"""Where bundles are found and which ones the Slicer module offers (SinusAnomalyLib.modelstore,
no Slicer, no torch): the shipped default first, then the user's models folder."""
from __future__ import annotations

from SinusAnomalyLib import modelstore


def _bundle(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"bundle")
    return path


def test_the_shipped_default_comes_first_then_the_models_folder(tmp_path, monkeypatch):
    default = _bundle(tmp_path / "Resources" / "Models" / "synthetic-default.sabundle")
    monkeypatch.setattr(modelstore, "DEFAULT_BUNDLE", default)
    monkeypatch.setenv(modelstore.MODELS_ENV, str(tmp_path / "models"))
    for name in ("b.sabundle", "A.sabundle", "notes.txt"):
        _bundle(tmp_path / "models" / name)
    assert modelstore.default_bundle() == default
    assert modelstore.bundle_choices() == [
        ("Default (synthetic heads, not a clinical device)", default),
        ("A.sabundle", tmp_path / "models" / "A.sabundle"),
        ("b.sabundle", tmp_path / "models" / "b.sabundle"),
    ]
    assert modelstore.bundle_choices(tmp_path / "elsewhere") == [(modelstore.DEFAULT_BUNDLE_LABEL, default)]


def test_without_a_shipped_default_only_the_users_bundles_are_offered(tmp_path, monkeypatch):
    monkeypatch.setattr(modelstore, "DEFAULT_BUNDLE", tmp_path / "Resources" / "Models" / "synthetic-default.sabundle")
    monkeypatch.setenv(modelstore.MODELS_ENV, str(tmp_path / "models"))
    assert modelstore.default_bundle() is None
    assert modelstore.bundle_choices() == []  # neither: the selector says there are no bundles
    mine = _bundle(tmp_path / "models" / "mine.sabundle")
    assert modelstore.bundle_choices() == [("mine.sabundle", mine)]


def test_the_default_is_listed_once_when_the_models_folder_is_its_folder(tmp_path, monkeypatch):
    default = _bundle(tmp_path / "Models" / "synthetic-default.sabundle")
    mine = _bundle(tmp_path / "Models" / "mine.sabundle")
    monkeypatch.setattr(modelstore, "DEFAULT_BUNDLE", default)
    monkeypatch.setenv(modelstore.MODELS_ENV, str(tmp_path / "Models"))
    assert modelstore.bundle_choices() == [(modelstore.DEFAULT_BUNDLE_LABEL, default), ("mine.sabundle", mine)]
