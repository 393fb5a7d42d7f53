"""Tests for jaxrec/features/store.py: loading a features directory, and every way it refuses one.

A valid directory is made once with the weight-free extractors (metadata: dim 6, tfidf-svd:2), then
each refusal test copies it and breaks one thing. Where a check sits behind the array hash, the test
re-hashes the broken array into the manifest, so the check under test is the one that fires.
"""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.extract_features import main as extract_main
from jaxrec.errors import InputError
from jaxrec.features import Features, load_features
from tests.feature_fixtures import make_data_dir


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    data = make_data_dir(root / "data")
    feats = root / "feats"
    for argv in (["--modality", "meta", "--model", "metadata"], ["--modality", "text", "--model", "tfidf-svd:2"]):
        assert extract_main(["--data", str(data), "--out", str(feats), "--quiet", *argv]) == 0
    return data, feats


@pytest.fixture
def dirs(made, tmp_path):
    data, feats = made
    shutil.copytree(data, tmp_path / "data")
    shutil.copytree(feats, tmp_path / "feats")
    return tmp_path / "data", tmp_path / "feats"


def edit_manifest(feats: Path, fn):
    path = feats / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def rehash(feats: Path, name: str):
    digest = hashlib.sha256((feats / f"{name}.npy").read_bytes()).hexdigest()
    edit_manifest(feats, lambda m: m["modalities"][name].update(array_sha256=digest))


def refused(data, feats, modalities=None) -> InputError:
    with pytest.raises(InputError) as e:
        load_features(feats, data, modalities)
    return e.value


def test_loads_in_manifest_or_requested_order(dirs):
    data, feats = dirs
    f = load_features(feats, data)
    assert isinstance(f, Features) and f.names == ("meta", "text") and f.dims() == (6, 2)
    assert f.manifest["modalities"]["meta"]["model"] == "metadata"
    for name in f.names:
        assert f.arrays[name].dtype == np.float32 and f.arrays[name].shape[0] == 6
        assert f.masks[name].dtype == np.bool_ and f.masks[name].shape == (6,)
        assert not f.arrays[name].flags.writeable  # memory-mapped read-only: a consumer cannot change the cache
        assert (f.arrays[name][~f.masks[name]] == 0).all()
    # Item 2 has neither title nor genres: no metadata, no text.
    assert f.masks["meta"].tolist() == [True, True, False, True, True, True]
    assert f.masks["text"][2] == False  # noqa: E712
    g = load_features(str(feats), str(data), ["text"])
    assert g.names == ("text",) and g.dims() == (2,) and list(g.arrays) == ["text"]
    assert load_features(feats, data, ["text", "meta"]).names == ("text", "meta")
    np.testing.assert_array_equal(g.arrays["text"], f.arrays["text"])


def test_refuses_missing_directory_and_manifest(dirs, tmp_path):
    data, feats = dirs
    e = refused(data, tmp_path / "nope")
    assert e.where == str(tmp_path / "nope") and "extract_features.py" in e.message
    (feats / "manifest.json").unlink()
    e = refused(data, feats)
    assert e.where == str(feats / "manifest.json") and "missing" in e.message


def test_refuses_bad_json_with_its_line(dirs):
    data, feats = dirs
    (feats / "manifest.json").write_text('{\n  "format_version": 1,\n  oops\n}\n')
    e = refused(data, feats)
    assert (e.where, e.line) == (str(feats / "manifest.json"), 3) and "not valid JSON" in e.message


@pytest.mark.parametrize("breaks, expected", [
    (lambda m: m.update(format_version=2), "format_version 2, expected 1"),
    (lambda m: m.pop("data_meta_sha256"), "'data_meta_sha256' missing"),
    (lambda m: m["modalities"]["text"].pop("dim"), "modality 'text' lacks ['dim']"),
    (lambda m: m["modalities"]["text"].update(modality="video"), "kind 'video'"),
    (lambda m: m["modalities"]["meta"].update(items_present="5"), "items_present '5' is not a non-negative integer"),
    (lambda m: m.update(modalities=[]), "'modalities' missing or not a dict"),
])
def test_refuses_malformed_manifest(dirs, breaks, expected):
    data, feats = dirs
    edit_manifest(feats, breaks)
    e = refused(data, feats)
    assert e.where == str(feats / "manifest.json") and expected in e.message, e.message


def test_refuses_features_of_another_data_set(dirs):
    data, feats = dirs
    meta = json.loads((data / "meta.json").read_text())
    meta["name"] = "another"
    (data / "meta.json").write_text(json.dumps(meta))
    e = refused(data, feats)
    assert e.where == str(feats / "manifest.json") and "features of another data set" in e.message


def test_refuses_missing_meta_json(dirs):
    data, feats = dirs
    (data / "meta.json").unlink()
    assert refused(data, feats).where == str(data / "meta.json")


@pytest.mark.parametrize("victim", ["text.npy", "text_mask.npy"])
def test_refuses_missing_array_or_mask(dirs, victim):
    data, feats = dirs
    (feats / victim).unlink()
    e = refused(data, feats)
    assert e.where == str(feats / victim) and "missing" in e.message
    load_features(feats, data, ["meta"])  # the other modality alone still loads


def test_refuses_unreadable_npy(dirs):
    data, feats = dirs
    (feats / "meta.npy").write_bytes(b"not an npy file at all")
    e = refused(data, feats)
    assert e.where == str(feats / "meta.npy") and "not a readable .npy" in e.message


@pytest.mark.parametrize("array, expected", [
    (np.zeros(6, np.float32), "shape (6,), expected (6, 6)"),  # wrong ndim
    (np.zeros((7, 6), np.float32), "shape (7, 6), expected (6, 6)"),  # rows != n_items of the data
    (np.zeros((6, 5), np.float32), "shape (6, 5), expected (6, 6)"),  # dim != manifest dim
    (np.zeros((6, 6), np.float64), "dtype float64, expected float32"),
])
def test_refuses_wrong_shape_or_dtype(dirs, array, expected):
    data, feats = dirs
    np.save(feats / "meta.npy", array)
    e = refused(data, feats)
    assert e.where == str(feats / "meta.npy") and expected in e.message, e.message


@pytest.mark.parametrize("mask, expected", [
    (np.ones(6, np.int8), "dtype int8, expected bool"),
    (np.ones(5, bool), "shape (5,), expected (6,)"),
    (np.ones(6, bool), "6 items present, but manifest.json says items_present 5"),
])
def test_refuses_bad_mask(dirs, mask, expected):
    data, feats = dirs
    np.save(feats / "meta_mask.npy", mask)
    e = refused(data, feats)
    assert e.where == str(feats / "meta_mask.npy") and expected in e.message, e.message


def test_refuses_nonzero_row_of_a_masked_out_item(dirs):
    data, feats = dirs
    a = np.load(feats / "meta.npy")
    a[2, 0] = 1.0  # item 2 (original id 50) has no metadata
    np.save(feats / "meta.npy", a)
    rehash(feats, "meta")
    e = refused(data, feats)
    assert e.where == str(feats / "meta.npy")
    assert "item 2 (original id 50) is not all zero although its mask is False" in e.message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_non_finite_values_naming_the_item(dirs, bad):
    data, feats = dirs
    a = np.load(feats / "meta.npy")
    a[3, 1] = bad  # item 3 = original id 20
    np.save(feats / "meta.npy", a)
    rehash(feats, "meta")
    e = refused(data, feats)
    assert e.where == str(feats / "meta.npy") and "item 3 (original id 20) has NaN or inf" in e.message


def test_refuses_an_array_changed_after_extraction(dirs):
    data, feats = dirs
    a = np.load(feats / "text.npy")
    a[0, 0] += 0.25  # still finite, same shape: only the hash can tell
    np.save(feats / "text.npy", a)
    e = refused(data, feats)
    assert e.where == str(feats / "text.npy") and "differs from array_sha256" in e.message


def test_refuses_unknown_or_repeated_modality(dirs):
    data, feats = dirs
    e = refused(data, feats, ["image"])
    assert e.where == str(feats / "manifest.json") and "no modality 'image'; available: meta, text" in e.message
    assert "more than once" in refused(data, feats, ["meta", "meta"]).message


def test_checks_every_chunk_of_a_large_array(dirs, monkeypatch):
    # Rows are checked in chunks; a bad row in a later chunk must be found too.
    from jaxrec.features import store

    monkeypatch.setattr(store, "_CHUNK_ROWS", 2)
    data, feats = dirs
    load_features(feats, data)
    a = np.load(feats / "meta.npy")
    a[5, 0] = np.nan
    np.save(feats / "meta.npy", a)
    rehash(feats, "meta")
    assert "item 5 (original id 60)" in refused(data, feats).message
