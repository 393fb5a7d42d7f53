"""Tests for data_prep/extract_features.py (docs/design.md, section 3) and data_prep/encoders.py.

Tiny random-weight BERT / ViT / AST checkpoints are saved to a temp dir once per module and loaded BY
PATH through the real ``from_pretrained``. Expected rows are recomputed here directly from the same
checkpoint (tokenizer/processor + model) and compared with what the script wrote into the right row;
the weight-free extractors are checked against hand-computed values. The CLI runs in-process
(``main([...])``); subprocess tests check the exit status and the single ``error:`` line.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import encoders
from data_prep.extract_features import find_media, item_texts, main, read_text_table
from jaxrec.features import load_features
from tests.feature_fixtures import ITEMS, make_data_dir, make_models, solid_image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAXREC_SHARED_DATA") or REPO.parent / "shared" / "data")
SCRIPT = REPO / "data_prep" / "extract_features.py"

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PLOTS = ('movie_id,title,plot\n30,Toy Story,"A plot about toys,\nover two lines."\n10,Heat,Cops and robbers.\n'
         '50,Untitled,A plot about the untitled.\n999,Not an item,Ignored.\n')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def data(tmp_path):
    return make_data_dir(tmp_path / "data")


def run(capsys, *argv, quiet=True):
    rc = main([str(a) for a in argv] + (["--quiet"] if quiet else []))
    out, err = capsys.readouterr()
    return rc, out, err


def extract_ok(capsys, data, out, *argv):
    rc, _, err = run(capsys, "--data", data, "--out", out, *argv)
    assert rc == 0, err
    return json.loads((Path(out) / "manifest.json").read_text())


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and ".partial" not in p.parts}


def assert_refused(capsys, argv, where, contains, out: Path):
    """Exit 2, one stderr line ``error: WHERE...: ...CONTAINS...``, and OUT left as it was."""
    before = snapshot(out) if out.exists() else None
    rc, _, err = run(capsys, *argv, "--out", out)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {where}") and contains in lines[0], lines[0]
    assert (snapshot(out) if out.exists() else None) == before
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# Direct recomputation from a checkpoint


def bert_rows(path, texts, pooling="cls", max_length=None):
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding, so batching in the script must not matter
            enc = tok([t], truncation=max_length is not None, max_length=max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            rows.append(h[0] if pooling == "cls" else h.mean(0))
    return torch.stack(rows).numpy()


def vit_rows(path, files, pooling="cls"):
    from PIL import Image

    proc = transformers.AutoImageProcessor.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(pixel_values=proc(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]).last_hidden_state
    return (h[:, 0] if pooling == "cls" else h[:, 1:].mean(1)).numpy()


def ast_rows(path, clips):
    fe = transformers.AutoFeatureExtractor.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(**fe(clips, sampling_rate=16000, return_tensors="pt")).last_hidden_state
    return h[:, :2].mean(1).numpy()  # AST: [CLS] and distillation token, averaged as its pooler does


# ----------------------------------------------------------------------------------------------------
# Texts of items


def test_item_texts_title_genres_and_csv_text(tmp_path, data):
    items = pd.read_csv(data / "items.csv", dtype=str, keep_default_na=False)
    texts, source = item_texts(items, None)
    assert texts == ["Toy Story (1995). Animation, Comedy", "Heat, The (1995). Action, Crime", "",
                     "Toy Heat Story (2000). Comedy, Action", "The Story (1990). Comedy", "Crime Story. Crime"]
    assert source == {"fields": ["title", "genres"]}
    csv = tmp_path / "plots.csv"
    csv.write_text(PLOTS)
    texts, source = item_texts(items, csv)
    # Quoted multi-line plots stay whole; item 2 (id 50) has only a plot; id 999 matches no item.
    assert texts[0] == "Toy Story (1995). Animation, Comedy. A plot about toys,\nover two lines."
    assert texts[1] == "Heat, The (1995). Action, Crime. Cops and robbers."
    assert texts[2] == "A plot about the untitled."
    assert texts[3] == "Toy Heat Story (2000). Comedy, Action"
    assert source["csv"]["id_column"] == "movie_id" and source["csv"]["text_column"] == "plot"
    assert source["csv"]["items_matched"] == 3 and source["csv"]["rows"] == 4
    assert source["csv"]["sha256"] == hashlib.sha256(PLOTS.encode()).hexdigest()


def test_text_table_column_detection_and_errors(tmp_path):
    ok = tmp_path / "t.tsv"
    ok.write_text("Original_ID\tDescription\n1\tx\n")
    _, id_col, text_col = read_text_table(ok)
    assert (id_col, text_col) == ("Original_ID", "Description")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,summary\n1,x\n")
    with pytest.raises(Exception, match=r"needs an id column \(original_id or movie_id or item\) and a text column"):
        read_text_table(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("item,text\n1,a\n2,b\n1,c\n")
    with pytest.raises(Exception, match=r"id '1' appears twice \(rows 1 and 3"):
        read_text_table(dup)


# ----------------------------------------------------------------------------------------------------
# Weight-free extractors


def test_metadata_features_by_hand(tmp_path, data, capsys):
    m = extract_ok(capsys, data, tmp_path / "f", "--modality", "meta", "--model", "metadata")
    e = m["modalities"]["meta"]
    assert e["columns"] == ["genre:Action", "genre:Animation", "genre:Comedy", "genre:Crime", "year_z", "has_year"]
    # Years 1995, 1995, 2000, 1990: mean 1995, population std sqrt(12.5) = 3.5355; z = 0, 0, +1.414, -1.414.
    z = 5 / np.sqrt(12.5)
    expected = np.array([
        [0, 1, 1, 0, 0, 1],   # Toy Story (1995): Animation, Comedy
        [1, 0, 0, 1, 0, 1],   # Heat (1995): Action, Crime
        [0, 0, 0, 0, 0, 0],   # nothing
        [1, 0, 1, 0, z, 1],   # (2000): Comedy, Action
        [0, 0, 1, 0, -z, 1],  # (1990): Comedy
        [0, 0, 0, 1, 0, 0],   # Crime; "(no genres listed)" is no genre; no year
    ], np.float32)
    f = load_features(tmp_path / "f", data)
    np.testing.assert_allclose(f.arrays["meta"], expected, rtol=1e-6)
    assert f.masks["meta"].tolist() == [True, True, False, True, True, True]
    assert (e["model"], e["dim"], e["items_present"], e["weights_sha256"]) == ("metadata", 6, 5, None)
    assert e["encoder"]["year_mean"] == 1995.0


def test_tfidf_svd_deterministic_normalised_and_as_sklearn(tmp_path, data, capsys):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    csv = tmp_path / "plots.csv"
    csv.write_text(PLOTS)
    argv = ["--modality", "text", "--model", "tfidf-svd:3", "--src", csv]
    m1 = extract_ok(capsys, data, tmp_path / "a", *argv)
    m2 = extract_ok(capsys, data, tmp_path / "b", *argv)
    a = (tmp_path / "a" / "text.npy").read_bytes()
    assert a == (tmp_path / "b" / "text.npy").read_bytes()
    assert m1["modalities"]["text"]["weights_sha256"] == m2["modalities"]["text"]["weights_sha256"]
    f = load_features(tmp_path / "a", data)
    x, mask = f.arrays["text"], f.masks["text"]
    assert x.shape == (6, 3) and mask.all()  # item 2 has a plot now
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    texts, _ = item_texts(pd.read_csv(data / "items.csv", dtype=str, keep_default_na=False), csv)
    tf = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2).fit_transform(texts)
    z = TruncatedSVD(3, algorithm="arpack", random_state=0).fit_transform(tf)
    np.testing.assert_allclose(x, z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_tfidf_dim_too_large_and_item_without_known_words(tmp_path, data, capsys):
    assert_refused(capsys, ["--data", data, "--modality", "text", "--model", "tfidf-svd:50"], "--model",
                   "needs fewer dimensions than both the texts (5) and the vocabulary", tmp_path / "f")
    # Without plots, "The Story (1990). Comedy" and the rest share words; a text whose every word is a
    # stop word or seen once has no TF-IDF terms: mask False.
    items = ITEMS.copy()
    items.loc[5, ["title", "genres"]] = ["Unique Words", ""]
    data2 = make_data_dir(tmp_path / "d2", items)
    extract_ok(capsys, data2, tmp_path / "g", "--modality", "text", "--model", "tfidf-svd:2")
    f = load_features(tmp_path / "g", data2)
    assert f.masks["text"].tolist() == [True, True, False, True, True, False]


# ----------------------------------------------------------------------------------------------------
# Pretrained models, loaded by path


def test_text_model_rows_masks_and_manifest(tmp_path, data, models, capsys):
    m = extract_ok(capsys, data, tmp_path / "f", "--modality", "text", "--model", models["text"], "--batch-size", 2,
                   "--device", "cpu")
    e = m["modalities"]["text"]
    f = load_features(tmp_path / "f", data)
    x = f.arrays["text"]
    assert x.shape == (6, 32) and f.masks["text"].tolist() == [True, True, False, True, True, True]
    assert (x[2] == 0).all()
    texts, _ = item_texts(pd.read_csv(data / "items.csv", dtype=str, keep_default_na=False), None)
    present = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(x[present], bert_rows(models["text"], [texts[i] for i in present]), atol=2e-5)
    model = transformers.AutoModel.from_pretrained(models["text"])
    assert e["weights_sha256"] == encoders.state_dict_sha256(model)
    assert (e["modality"], e["model"], e["dim"], e["pooling"], e["items_present"]) == ("text", str(models["text"]), 32, "cls", 5)
    assert e["encoder"]["max_length"] == 64  # the model's max_position_embeddings
    assert m["data_meta_sha256"] == hashlib.sha256((data / "meta.json").read_bytes()).hexdigest()
    assert not (tmp_path / "f" / ".partial").exists()

    extract_ok(capsys, data, tmp_path / "f", "--modality", "text", "--model", models["text"], "--pooling", "mean",
               "--name", "text_mean", "--max-length", 8)
    f = load_features(tmp_path / "f", data)
    assert f.names == ("text", "text_mean")
    # Truncated at 8 tokens; "Crime Story. Crime" has 6, so its batch is padded: the mean must skip the padding.
    tok = transformers.AutoTokenizer.from_pretrained(models["text"])
    assert sorted(len(tok(texts[i], truncation=True, max_length=8)["input_ids"]) for i in present) == [6, 8, 8, 8, 8]
    np.testing.assert_allclose(f.arrays["text_mean"][present], bert_rows(models["text"], [texts[i] for i in present], "mean", 8),
                               atol=2e-5)


def test_weights_hash_does_not_depend_on_the_path(tmp_path, models):
    model = transformers.AutoModel.from_pretrained(models["image"])
    model.save_pretrained(tmp_path / "copy")
    again = transformers.AutoModel.from_pretrained(tmp_path / "copy")
    assert encoders.state_dict_sha256(again) == encoders.state_dict_sha256(model)
    with torch.no_grad():
        next(again.parameters()).add_(1e-3)
    assert encoders.state_dict_sha256(again) != encoders.state_dict_sha256(model)


def test_image_posters_by_original_id_and_frames_averaged(tmp_path, data, models, capsys):
    src = tmp_path / "posters"
    p30 = solid_image(src / "30.jpg", (200, 30, 30))        # item 0
    p20 = solid_image(src / "20.png", (30, 200, 30))        # item 3
    frames = [solid_image(src / "40" / "b.png", (30, 30, 200)), solid_image(src / "40" / "a.jpg", (250, 250, 250))]  # item 4
    solid_image(src / "999.jpg", (0, 0, 0))                 # no such item: ignored
    (src / "notes.txt").write_text("not an image")
    (src / "60").mkdir()                                    # empty frames folder: item 5 has no image
    m = extract_ok(capsys, data, tmp_path / "f", "--modality", "image", "--model", models["image"], "--src", src,
                   "--batch-size", 2, "--device", "cpu")
    f = load_features(tmp_path / "f", data)
    x, mask = f.arrays["image"], f.masks["image"]
    assert mask.tolist() == [True, False, False, True, True, False]
    assert (x[~mask] == 0).all()
    direct = vit_rows(models["image"], [p30, p20, *frames])
    np.testing.assert_allclose(x[0], direct[0], atol=2e-5)
    np.testing.assert_allclose(x[3], direct[1], atol=2e-5)
    np.testing.assert_allclose(x[4], direct[2:].mean(0), atol=2e-5)
    e = m["modalities"]["image"]
    assert e["source"]["files"] == 4 and e["source"]["items_matched"] == 3 and e["source"]["unmatched_entries"] == 1
    assert e["encoder"]["special_tokens"] == 1 and e["items_present"] == 3

    extract_ok(capsys, data, tmp_path / "f", "--modality", "image", "--model", models["image"], "--src", src,
               "--pooling", "mean", "--name", "image_mean")
    x = load_features(tmp_path / "f", data, ["image_mean"]).arrays["image_mean"]
    np.testing.assert_allclose(x[0], vit_rows(models["image"], [p30], "mean")[0], atol=2e-5)


def test_audio_resampled_mixed_and_windowed(tmp_path, data, models, capsys):
    import soundfile as sf
    import soxr

    rng = np.random.default_rng(0)
    src = tmp_path / "audio"
    src.mkdir()
    # Item 1 (id 10): 0.4 s of 8 kHz stereo -> mono -> 16 kHz, shorter than a window (padded).
    stereo = (rng.standard_normal((3200, 2)) * 0.1).astype(np.float32)
    sf.write(src / "10.wav", stereo, 8000, subtype="FLOAT")
    # Item 0 (id 30): 16 kHz mono, two strides and a short tail. The tiny AST takes 64 frames: a window
    # is 63 hops of 160 samples + one 400-sample frame = 10,480 samples, one every 10,240; the tail
    # (3,000 < 10,240 / 2 samples) is dropped.
    sf.write(src / "30.flac", (rng.standard_normal(2 * 10_240 + 3_000) * 0.1).astype(np.float32), 16000, subtype="PCM_24")
    long, _ = sf.read(src / "30.flac", dtype="float32")  # what the file holds after 24-bit quantisation
    m = extract_ok(capsys, data, tmp_path / "f", "--modality", "audio", "--model", models["audio"], "--src", src,
                   "--batch-size", 2, "--device", "cpu")
    f = load_features(tmp_path / "f", data)
    x, mask = f.arrays["audio"], f.masks["audio"]
    assert mask.tolist() == [True, True, False, False, False, False]
    mono16k = soxr.resample(stereo.mean(axis=1), 8000, 16000, quality="HQ").astype(np.float32)
    np.testing.assert_allclose(x[1], ast_rows(models["audio"], [mono16k])[0], atol=2e-5)
    windows = [long[:10_480], long[10_240:20_720]]
    np.testing.assert_allclose(x[0], ast_rows(models["audio"], windows).mean(0), atol=2e-5)
    e = m["modalities"]["audio"]["encoder"]
    assert (e["sampling_rate"], e["window_samples"], e["stride_samples"], e["special_tokens"]) == (16000, 10_480, 10_240, 2)


def test_audio_windows_rule():
    w = encoders.audio_windows
    assert [len(a) for a in w(np.zeros(5), 10, 8)] == [5]                     # shorter than a window: one, padded later
    assert [len(a) for a in w(np.zeros(20), 10, 8)] == [10, 10, 4]           # tail 4 >= 8 // 2: kept
    assert [len(a) for a in w(np.zeros(19), 10, 8)] == [10, 10]              # tail 3 < 4: dropped


def test_unreadable_media_is_an_error_naming_it_and_out_is_kept(tmp_path, data, models, capsys):
    out = tmp_path / "f"
    extract_ok(capsys, data, out, "--modality", "meta", "--model", "metadata")
    src = tmp_path / "posters"
    solid_image(src / "30.jpg", (1, 2, 3))
    (src / "20.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    assert_refused(capsys, ["--data", data, "--modality", "image", "--model", models["image"], "--src", src, "--batch-size", 1],
                   f"{src / '20.jpg'}: cannot decode the image", "expected a readable jpg or png", out)
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "30.ogg").write_bytes(b"OggS but not really")
    assert_refused(capsys, ["--data", data, "--modality", "audio", "--model", models["audio"], "--src", audio],
                   f"{audio / '30.ogg'}: cannot decode the audio", "expected a readable wav", out)
    assert load_features(out, data).names == ("meta",)


# ----------------------------------------------------------------------------------------------------
# Resuming


def test_resume_after_a_kill_gives_the_same_bytes(tmp_path, data, models, capsys, monkeypatch):
    argv = ["--modality", "text", "--model", models["text"], "--batch-size", 2, "--device", "cpu"]
    extract_ok(capsys, data, tmp_path / "whole", *argv)

    calls = []
    real = encoders.TextEncoder.encode

    def dies_after_two_batches(self, texts):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(list(texts))
        return real(self, texts)

    monkeypatch.setattr(encoders.TextEncoder, "encode", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        main(["--data", str(data), "--out", str(tmp_path / "resumed"), "--quiet", *map(str, argv)])
    partial = tmp_path / "resumed" / ".partial"
    assert (partial / "text.npy").exists() and np.load(partial / "text_done.npy").sum() == 4
    assert not (tmp_path / "resumed" / "manifest.json").exists()

    # Partial state from other arguments is refused, and kept.
    rc, _, err = run(capsys, "--data", data, "--out", tmp_path / "resumed", *argv[:-4], "--batch-size", 3, "--device", "cpu")
    assert rc == 2 and err.startswith(f"error: {partial / 'text.json'}: partial extraction made with different arguments "
                                      "(batch_size differ)") and "--restart" in err, err
    assert np.load(partial / "text_done.npy").sum() == 4

    monkeypatch.setattr(encoders.TextEncoder, "encode", lambda self, t: calls.append(list(t)) or real(self, t))
    calls.clear()
    extract_ok(capsys, data, tmp_path / "resumed", *argv)
    assert len(calls) == 1 and len(calls[0]) == 1  # only the last batch (5 texts in batches of 2) ran again
    for name in ("text.npy", "text_mask.npy"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert not partial.exists()

    # --restart throws partial state away and starts over.
    monkeypatch.setattr(encoders.TextEncoder, "encode", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        main(["--data", str(data), "--out", str(tmp_path / "r2"), "--quiet", *map(str, argv)])
    monkeypatch.setattr(encoders.TextEncoder, "encode", lambda self, t: calls.append(list(t)) or real(self, t))
    calls.clear()
    extract_ok(capsys, data, tmp_path / "r2", *argv[:-4], "--batch-size", 3, "--device", "cpu", "--restart")
    assert len(calls) == 2


# ----------------------------------------------------------------------------------------------------
# The features directory


def test_merges_into_manifest_replaces_same_name_and_refuses_other_data(tmp_path, data, capsys):
    out = tmp_path / "f"
    extract_ok(capsys, data, out, "--modality", "meta", "--model", "metadata")
    extract_ok(capsys, data, out, "--modality", "text", "--model", "tfidf-svd:2", "--note", "first")
    meta_before = (out / "meta.npy").read_bytes()
    m = extract_ok(capsys, data, out, "--modality", "text", "--model", "tfidf-svd:3")
    assert list(m["modalities"]) == ["meta", "text"] and m["modalities"]["text"]["dim"] == 3
    assert "note" not in m["modalities"]["text"] and (out / "meta.npy").read_bytes() == meta_before
    assert load_features(out, data).dims() == (6, 3)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "meta.npy", "meta_mask.npy", "text.npy", "text_mask.npy"]

    other = make_data_dir(tmp_path / "other", name="other")
    assert_refused(capsys, ["--data", other, "--modality", "meta", "--model", "metadata"],
                   f"{out / 'manifest.json'}: holds features of another data set", "use another --out", out)


@pytest.mark.parametrize("argv, where, contains", [
    (["--modality", "image", "--model", "tfidf-svd:4"], "--model", "is a --modality text extractor"),
    (["--modality", "text", "--model", "metadata"], "--model", "metadata goes with --modality meta"),
    (["--modality", "meta", "--model", "bert-base-uncased"], "--model", "--modality meta takes --model metadata"),
    (["--modality", "text", "--model", "tfidf-svd:x"], "--model", "expected tfidf-svd:DIM"),
    (["--modality", "image", "--model", "MODEL"], "--src", "--modality image needs --src"),
    (["--modality", "audio", "--model", "MODEL", "--src", "NOPE"], "NOPE", "no such directory"),
    (["--modality", "text", "--model", "tfidf-svd:2", "--src", "NOPE.csv"], "NOPE.csv", "no such file"),
    (["--modality", "text", "--model", "MODEL", "--batch-size", "0"], "--batch-size", "expected a positive integer"),
    (["--modality", "text", "--model", "MODEL", "--name", "x_mask"], "--name", "bad modality name"),
    (["--modality", "video", "--model", "MODEL"], "--modality", "invalid choice"),
    (["--modality", "text", "--model", "MODEL"], "MODEL", "no such model directory"),
])
def test_bad_flags_and_inputs(tmp_path, data, capsys, models, argv, where, contains):
    argv = [str(models["text"].parent / "nope") if a == "MODEL" else str(tmp_path / a) if a.startswith("NOPE") else a for a in argv]
    where = str(models["text"].parent / "nope") if where == "MODEL" else str(tmp_path / where) if where.startswith("NOPE") else where
    assert_refused(capsys, ["--data", data, *argv], where, contains, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_bad_data_dir_and_csv_without_needed_columns(tmp_path, data, capsys):
    assert_refused(capsys, ["--data", tmp_path / "none", "--modality", "meta", "--model", "metadata"],
                   f"{tmp_path / 'none'}: no such data directory", "prepare.py", tmp_path / "f")
    csv = tmp_path / "t.csv"
    csv.write_text("id,synopsis\n30,x\n")
    assert_refused(capsys, ["--data", data, "--modality", "text", "--model", "tfidf-svd:2", "--src", csv],
                   f"{csv}: needs an id column", "the columns are ['id', 'synopsis']", tmp_path / "f")
    csv.write_text("item,text\n7,x\n8,y\n")
    assert_refused(capsys, ["--data", data, "--modality", "text", "--model", "tfidf-svd:2", "--src", csv],
                   f"{csv}: no id in column 'item' matches", "original_id", tmp_path / "f")


def test_subprocess_exit_status_and_one_error_line(tmp_path, data):
    bad_model = tmp_path / "not_a_model"
    bad_model.mkdir()
    cmd = [sys.executable, str(SCRIPT), "--data", str(data), "--modality", "image", "--model", str(bad_model),
           "--src", str(tmp_path), "--out", str(tmp_path / "f")]
    solid_image(tmp_path / "30.jpg", (1, 2, 3))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "CI": "1"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and re.match(rf"error: {re.escape(str(bad_model))}: cannot load the image processor", lines[0]), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------------------------------
# The benchmark's smoke test, and real data when present


def test_benchmark_quick(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/feature_extraction.py", "--quick"], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "CI": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"metric", "ours", "baseline", "ratio", "unit", "device"} <= set(last)
    assert last["ours"] > 0 and last["baseline"] > 0 and last["peak_rss_gb"] > 0


ML1M = SHARED_DATA / "ml-1m"


@pytest.mark.skipif(not (ML1M / "ml_1m_contents.csv").is_file() or not (ML1M / "posters").is_dir(),
                    reason="../shared/data/ml-1m (plots and posters) not present")
def test_real_ml1m_plots_and_posters_are_read():
    df, id_col, text_col = read_text_table(ML1M / "ml_1m_contents.csv")
    assert (len(df), id_col, text_col) == (3015, "movie_id", "plot") and (df[text_col].str.len() > 0).all()
    items = pd.DataFrame({"item": ["0", "1", "2"], "original_id": ["1", "2571", "5"]})
    found, source = find_media(ML1M / "posters", items, "image")
    assert sorted(found) == [0, 1] and source["files"] == 2 and source["unmatched_entries"] == 10
    for files in found.values():
        assert encoders.read_image(files[0]).size == (200, 300)
