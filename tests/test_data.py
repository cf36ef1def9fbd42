"""The MERBench reader on real-shaped folders, the restricted label unpickler, and every bad input."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from prmf.data import DataError, load_merbench, merbench, read_label_file
from prmf.data.synthetic import CLASS_COUNTS, FEATURES, generate

from helpers import FEATS, LABELS, make_root





def test_round_trip_through_a_merbench_folder(tmp_path):
    root = make_root(tmp_path, LABELS, FEATS)
    ds = load_merbench(root, FEATS)
    tr = ds.splits["train"]
    assert list(tr.names) == ["s1", "s2"] and tr.emos.tolist() == [2, 3]
    assert tr.inputs[1].dtype == np.float32 and tr.inputs[1].shape == (2, 4) and tr.inputs[1].flags.c_contiguous
    assert np.isnan(ds.splits["test3"].vals).all()  # -10 means "no valence"
    assert (root / ".prmf-cache").is_dir()


def test_second_load_uses_the_cache_not_the_small_files(tmp_path, monkeypatch):
    root = make_root(tmp_path, LABELS, FEATS)
    first = load_merbench(root, FEATS)

    def no_small_files(folder, names):
        raise AssertionError(f"read {folder} again")

    monkeypatch.setattr(merbench, "_load_feature", no_small_files)
    cached = load_merbench(root, FEATS)
    x = cached.splits["train"].inputs[1]
    assert np.array_equal(x, first.splits["train"].inputs[1])
    # mapped from the cache's file, not read: a plain ndarray (Ray pickles it out of band) over a memmap
    assert type(x) is np.ndarray and isinstance(x.base, np.memmap)
    assert Path(x.base.filename).parent.parent == root / ".prmf-cache"
    buffers = []
    pickle.dumps(x, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1
    x[0] = 99.0  # copy-on-write: writable, and the cache file is untouched
    assert load_merbench(root, FEATS).splits["train"].inputs[1][0].tolist() == [1.0] * 4
    with pytest.raises(AssertionError, match="read"):  # one file rewritten: the cache is not used
        np.save(root / "features" / "t-UTT" / "s1.npy", np.zeros(4, np.float32))
        load_merbench(root, FEATS)


def test_cache_skips_debris_and_old_formats_and_unwritable_folders(tmp_path, capsys):
    root = make_root(tmp_path, LABELS, FEATS)
    cache = root / ".prmf-cache"
    cache.mkdir()
    name = merbench._cache_name(root, FEATS)
    (cache / f"{name}.npz").write_bytes(b"PK old format")  # earlier versions' cache: ignored, then removed
    killed = cache / f".{name}-0123456789abcdef.x1y2"  # a killed writer's temporary folder: never read
    killed.mkdir()
    (killed / "meta.json").write_text("{")
    ds = load_merbench(root, FEATS)
    assert ds.splits["train"].inputs[0][1].tolist() == [2.0] * 3 and "changed" not in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir() if p != killed) == [f"{name}-{merbench._cache_key(root, FEATS)[:16]}"]
    assert isinstance(load_merbench(root, FEATS).splits["train"].inputs[0].base, np.memmap)
    folder = next(cache.glob(f"{name}-*"))
    (folder / "train.audio.npy").unlink()  # a damaged cache is rebuilt, not skipped on every load
    assert load_merbench(root, FEATS).splits["train"].inputs[0][1].tolist() == [2.0] * 3
    assert isinstance(load_merbench(root, FEATS).splits["train"].inputs[0].base, np.memmap)

    other = make_root(tmp_path / "ro", LABELS, FEATS)
    (other / ".prmf-cache").write_text("")  # no cache can be made here (as in a read-only data folder)
    for _ in range(2):
        assert load_merbench(other, FEATS).splits["train"].inputs[2][0].tolist() == [1.0, 1.0]


def test_frame_level_features_are_padded_with_lengths(tmp_path):
    root = make_root(tmp_path, {"train": LABELS["train"]}, ("a-FRA", "t-FRA", "v-FRA"))
    np.save(root / "features" / "a-FRA" / "s1.npy", np.ones((5, 3), np.float32))
    np.save(root / "features" / "a-FRA" / "s2.npy", np.ones((2, 3), np.float32))
    for f in ("t-FRA", "v-FRA"):
        for n in ("s1", "s2"):
            np.save(root / "features" / f / f"{n}.npy", np.ones((3, 2), np.float32))
    ds = load_merbench(root, ("a-FRA", "t-FRA", "v-FRA"))
    assert ds.feat_type == "frm" and ds.splits["train"].inputs[0].shape == (2, 5, 3)
    assert ds.splits["train"].lengths[0].tolist() == [5, 2]


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        load_merbench(tmp_path / "nope", FEATS)


def test_missing_feature_file_is_named(tmp_path):
    root = make_root(tmp_path, LABELS, FEATS)
    (root / "features" / "t-UTT" / "s2.npy").unlink()
    with pytest.raises(DataError, match=r"t-UTT/s2\.npy: missing feature file for sample 's2'"):
        load_merbench(root, FEATS)


def test_dimension_mismatch(tmp_path):
    root = make_root(tmp_path, LABELS, FEATS)
    np.save(root / "features" / "v-UTT" / "s2.npy", np.ones(7, np.float32))
    with pytest.raises(DataError, match=r"v-UTT/s2\.npy: shape \(7,\) does not match"):
        load_merbench(root, FEATS)


def test_nan_values(tmp_path):
    root = make_root(tmp_path, LABELS, FEATS)
    np.save(root / "features" / "a-UTT" / "s1.npy", np.array([1, np.nan, 0], np.float32))
    with pytest.raises(DataError, match=r"a-UTT/s1\.npy: contains NaN or inf"):
        load_merbench(root, FEATS)


def test_unknown_emotion_label(tmp_path):
    root = make_root(tmp_path, {"train": {"s1": {"emo": "bored", "val": 0.0}}}, FEATS)
    with pytest.raises(DataError, match=r"sample 's1' has emotion 'bored'"):
        load_merbench(root, FEATS)


class Boom:
    def __reduce__(self):
        return (print, ("side effect",))


def test_label_unpickler_refuses_arbitrary_classes(tmp_path):
    path = tmp_path / "label-6way.npz"
    np.savez(path, train_corpus=np.array({"s1": {"emo": "happy", "val": Boom()}}, dtype=object))
    with pytest.raises(DataError, match="builtins.print is not allowed"):
        read_label_file(path)


def test_reads_the_real_mer2023_label_file(shared):
    labels = read_label_file(shared("data", "mer2023", "label-6way.npz"))
    assert sorted(labels) == ["test1_corpus", "test2_corpus", "test3_corpus", "train_corpus"]
    assert sum(len(v) for v in labels.values()) == 5030
    train = labels["train_corpus"]
    counts = [sum(e["emo"] == c for e in train.values()) for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")]
    assert tuple(counts) == CLASS_COUNTS["train"]
    assert all(e["val"] == -10 for e in labels["test3_corpus"].values())


def test_synthetic_set_has_mer2023_shape(tmp_path):
    root = generate(tmp_path / "syn", "small", seed=1)
    ds = load_merbench(root, FEATURES["small"])
    for split, counts in CLASS_COUNTS.items():
        assert np.bincount(ds.splits[split].emos, minlength=6).tolist() == list(counts)
    assert ds.dims == [64, 128, 48]
    t2 = ds.splits["test2"]
    missing = np.stack([np.abs(x).sum(1) == 0 for x in t2.inputs], 1)
    assert 0.05 < missing.any(1).mean() < 0.3  # MER-NOISE-like: some modalities absent
    assert np.isnan(ds.splits["test3"].vals).all() and not np.isnan(ds.splits["test1"].vals).any()
    # valence is tied to the class
    tr = ds.splits["train"]
    assert tr.vals[tr.emos == 2].mean() > 1 and tr.vals[tr.emos == 3].mean() < -1
