"""Read a MERBench dataset root into contiguous float32 arrays, once.

    ROOT/label-6way.npz                 train_corpus, test1_corpus, ... : pickled {name: {'emo', 'val'}}
    ROOT/features/NAME/SAMPLE.npy       (D,) utterance-level, or (T, D) frame-level

The label pickle is read with a restricted unpickler (plain containers, numbers and the numpy
array wrapper only). The first load writes a consolidated cache next to the data
(ROOT/.prmf-cache/NAME-KEY/, one plain .npy per array, no pickle) that later loads map into
memory (milliseconds, not a copy of every feature), instead of reopening thousands of small files.
KEY covers the name, inode, ctime, mtime and size of every file read (git's index check; a tool
that keeps mtimes still changes the ctime): a changed file means a new folder, the data is read
again (with a line on stderr) and the old folder removed.
"""
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import names as _names
from ..store import umask

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")  # MER2023's order
SPLITS = ("train", "test1", "test2", "test3")
NO_VALENCE = -10.0  # MER2023 stores -10 where a sample has no valence label (test3)
PAPER_FEATURES = ("chinese-hubert-large-UTT", "Baichuan-13B-Base-UTT", "clip-vit-large-patch14-UTT")
MODALITIES = ("audio", "text", "video")


class DataError(Exception):
    """Bad dataset input; the message is one line saying what and where."""


@dataclass
class Split:
    names: np.ndarray  # [N] str
    inputs: list  # 3 float32 arrays (audio, text, video): [N, D] or [N, T, D]
    lengths: list  # 3 int64 arrays [N] (frame counts; all 1 for utterance-level)
    emos: np.ndarray  # [N] int64 class ids
    vals: np.ndarray  # [N] float32 valence; NaN where there is none

    def __len__(self):
        return len(self.names)


@dataclass
class Dataset:
    name: str
    features: tuple  # feature folder names (audio, text, video)
    feat_type: str  # 'utt' or 'frm'
    splits: dict = field(default_factory=dict)
    classes: tuple = CLASSES
    profile: str = ""  # the built-in set's profile ('' for a MERBench root)
    warnings: list = field(default_factory=list)  # said on stderr at every load, the cached ones too

    @property
    def dims(self):
        return [x.shape[-1] for x in self.splits["train"].inputs]


class _LabelUnpickler(pickle.Unpickler):
    """Admits only what a numpy 0-d object array of plain dicts needs; never arbitrary classes."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a label file")


def read_label_file(path) -> dict:
    """{corpus key: {sample name: {'emo': str, 'val': float}}} from a MERBench label-6way.npz."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                raw = io.BytesIO(z.read(member))
                major, _ = np.lib.format.read_magic(raw)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(raw)
                key = member.removesuffix(".npy")
                if dtype != object:  # plain numbers: no pickle to read (the unpickler's errors would be noise)
                    raise DataError(f"{path}:{key}: expected a pickled object array ({{name: {{'emo', 'val'}}}}), "
                                    f"got an array of {dtype}, shape {shape}")
                obj = _LabelUnpickler(raw).load()
                out[key] = obj.item() if isinstance(obj, np.ndarray) else obj
    except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable label file ({e})") from None
    return out


def _valence(val, where: str, name: str) -> float:
    """A label's valence as a float (NaN where there is none); anything but a number is an error."""
    if val is None:
        return np.nan
    if isinstance(val, (bool, np.bool_)) or not isinstance(val, (int, float, np.integer, np.floating)):
        raise DataError(f"{where}: sample {name!r} has valence {val!r}, not a number")
    return np.nan if float(val) == NO_VALENCE else float(val)


def _label_arrays(corpus: dict, where: str):
    if not isinstance(corpus, dict) or not corpus:
        raise DataError(f"{where}: no samples (expected a non-empty {{name: {{'emo', 'val'}}}} mapping)")
    names = sorted(corpus)
    emos, vals = np.empty(len(names), np.int64), np.empty(len(names), np.float32)
    for i, name in enumerate(names):
        entry, name = corpus[name], str(name)
        try:  # a sample name becomes FOLDER/NAME.npy: it must not reach outside FOLDER
            _names.check(name, "sample name")
        except _names.BadName as e:
            raise DataError(f"{where}: {e}") from None
        emo = entry.get("emo") if isinstance(entry, dict) else None
        if emo not in CLASSES:
            raise DataError(f"{where}: sample {name!r} has emotion {emo!r}, not one of {', '.join(CLASSES)}")
        emos[i] = CLASSES.index(emo)
        vals[i] = _valence(entry.get("val", NO_VALENCE), where, name)
    return np.array(names), emos, vals


def _read_feature(f: Path) -> np.ndarray:
    """One feature file as a numeric array; an empty, cut or non-numeric file is a DataError."""
    try:
        a = np.load(f, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise DataError(f"{f}: unreadable feature file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise DataError(f"{f}: expected a numeric array, got {getattr(a, 'dtype', type(a).__name__)}")
    return a


def _load_feature(folder: Path, names):
    """Stack one feature folder's files for `names` into [N, D] or [N, T, D] (zero-padded)."""
    arrays, files = [], []
    for name in map(str, names):
        f = folder / f"{name}.npy"
        try:
            regular = stat.S_ISREG(os.stat(f).st_mode)
        except FileNotFoundError:
            raise DataError(f"{f}: missing feature file for sample {name!r}") from None
        except OSError as e:  # a symlink loop, no permission
            raise DataError(f"{f}: cannot be read ({e.strerror or e})") from None
        if not regular:  # a FIFO would block the read forever, a device never end
            raise DataError(f"{f}: not a regular file (a feature file is one .npy array)")
        a = _read_feature(f)
        if a.ndim not in (1, 2):
            raise DataError(f"{f}: expected shape (D,) or (T, D), got {a.shape}")
        if not np.isfinite(a).all():
            raise DataError(f"{f}: contains NaN or inf")
        arrays.append(a.astype(np.float32, copy=False))
        files.append(f)
    _check_dims(folder, arrays, files)
    if arrays[0].ndim == 1:
        return np.stack(arrays), np.ones(len(arrays), np.int64)
    lengths = np.array([len(a) for a in arrays], np.int64)
    out = np.zeros((len(arrays), lengths.max(), arrays[0].shape[1]), np.float32)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out, lengths


def _check_dims(folder: Path, arrays, files):
    """Every file of a folder has one layout ((D,) or (T, D) with one D): the error names the first
    file that differs from the majority, not whichever file happened to be read first."""
    kinds = [(a.ndim, a.shape[-1]) for a in arrays]
    common = max(dict.fromkeys(kinds), key=kinds.count)  # a tie: the first file read
    if len(set(kinds)) > 1:
        i = next(i for i, k in enumerate(kinds) if k != common)
        shape = "(D,)" if common[0] == 1 else "(T, D)"
        raise DataError(f"{files[i]}: shape {arrays[i].shape} does not match {shape} with D = {common[1]} of the other "
                        f"{kinds.count(common)} samples in {folder}")


ABSURD = 1e6  # |feature| above this: no encoder writes it. MERBench's are layer outputs of order
# 1-100; an LLM's rare "massive activations" reach ~1e4 (Sun et al., 2024). Beyond it lie export and
# unit errors (a 1e30 sentinel, uninitialised memory) that overflow float32 sums and diverge training.


def _absurd_values(root: Path, ds: "Dataset") -> list:
    """One warning per feature folder holding values beyond ABSURD, naming its first such file."""
    out = []
    for i, f in enumerate(ds.features):
        flat = {s: sp.inputs[i].reshape(len(sp), -1) for s, sp in ds.splits.items()}
        peaks = {s: np.maximum(x.max(1), -x.min(1)) for s, x in flat.items()}  # per sample, without an |x| copy
        names = [n for s, sp in ds.splits.items() for n in sp.names[peaks[s] > ABSURD]]
        if names:
            top = max(float(p.max()) for p in peaks.values())
            out.append(f"{root / 'features' / f / f'{names[0]}.npy'}: values up to {top:.0e} (|x| > {ABSURD:.0e}) in "
                       f"{len(names)} of {sum(map(len, peaks.values()))} files of this folder; "
                       f"features this large make training diverge")
    return out


def _cache_name(root: Path, features):
    """The cache file of (root, features): one per pair, replaced when its files change."""
    return hashlib.sha1("|".join([str(root.resolve()), *features]).encode()).hexdigest()[:16]


def _stat_key(st) -> str:
    """What git's index compares: inode, ctime, mtime and size. mtime alone is kept by `cp -p`,
    `rsync -a` and `tar x`, and fixed-dim features keep the size; ctime is set by the kernel on
    every write, rename or utime and cannot be set back, and a file replaced by rename has a new inode."""
    return f"{st.st_ino}:{st.st_ctime_ns}:{st.st_mtime_ns}:{st.st_size}"


def _cache_key(root: Path, features):
    """_stat_key of the label file and of every feature file (one scandir per folder): a file
    replaced in place changes the key even where its folder's mtime, or its own, does not."""
    h = hashlib.sha1()
    path = root / "label-6way.npz"
    try:
        h.update(f"label-6way.npz:{_stat_key(path.stat())}\n".encode())
        for f in features:
            path = root / "features" / f
            with os.scandir(path) as it:
                for e in sorted(it, key=lambda e: e.name):
                    try:
                        st = e.stat()
                    except OSError:  # a symlink loop or a dangling link: the link's own stat (its sample, if any, says why)
                        st = e.stat(follow_symlinks=False)
                    h.update(f"{f}/{e.name}:{_stat_key(st)}\n".encode())
    except OSError as e:  # the label file or a folder unreadable to this user
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    return h.hexdigest()


CACHE_ARRAYS = ("names", "emos", "vals", *MODALITIES, *(f"{m}_len" for m in MODALITIES))  # per split, one .npy file each


def _save_cache(folder: Path, ds: Dataset, key: str):
    """Write the cache folder whole or not at all: built under a temporary name, then renamed. The
    caches of older versions of the files (other keys) and an .npz cache of earlier versions go."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError:
        return  # a read-only data folder: no cache, the next load reads the files again
    try:
        for s, sp in ds.splits.items():
            for k, a in zip(CACHE_ARRAYS, (sp.names, sp.emos, sp.vals, *sp.inputs, *sp.lengths)):
                np.save(tmp / f"{s}.{k}.npy", a, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"name": ds.name, "features": ds.features, "feat_type": ds.feat_type,
                                                   "key": key, "splits": list(ds.splits), "warnings": ds.warnings}))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; teammates may share a data root
        os.rename(tmp, folder)  # fails where a concurrent load renamed its (identical) folder first
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in _stale_caches(folder):  # a process still mapping one keeps reading it: unlinked files live on
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _stale_caches(folder: Path):
    """Caches of (root, features) other than `folder`: older keys, and the .npz of earlier versions."""
    base = folder.name.rsplit("-", 1)[0]
    return [p for p in folder.parent.glob(f"{base}-*") if p != folder] + list(folder.parent.glob(f"{base}.npz"))


def _load_cache(folder: Path, key: str):
    """The cached Dataset, its arrays mapped from the cache files (copy-on-write: writable, and a
    write never reaches the file), or None when the folder is missing, stale or unreadable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key:
            return None
        ds = Dataset(meta["name"], tuple(meta["features"]), meta["feat_type"], warnings=meta.get("warnings", []))
        for s in meta["splits"]:
            # the features mapped (each mapping holds a file descriptor; the small arrays are read), and
            # np.asarray: plain ndarrays over the mapping, which pickle (Ray) like any array
            a = {k: np.asarray(np.load(folder / f"{s}.{k}.npy", mmap_mode="c" if k in MODALITIES else None,
                                       allow_pickle=False)) for k in CACHE_ARRAYS}
            ds.splits[s] = Split(a["names"], [a[m] for m in MODALITIES], [a[f"{m}_len"] for m in MODALITIES],
                                 a["emos"], a["vals"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ds


def load_merbench(root, features=PAPER_FEATURES, dataset_name="MER2023", use_cache=True) -> Dataset:
    """Load a MERBench root: `features` are the (audio, text, video) feature folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    features = tuple(features)
    if len(features) != 3:
        raise DataError(f"need 3 feature names (audio, text, video), got {len(features)}: {features}")
    for f in features:
        try:  # a feature folder name becomes ROOT/features/NAME: one folder, never a path out of it
            _names.check(f, "feature folder name")
        except _names.BadName as e:
            raise DataError(str(e)) from None
        _check_folder(root / "features" / f)
    if not (root / "label-6way.npz").is_file():
        raise DataError(f"{root / 'label-6way.npz'}: label file not found")
    files_key = _cache_key(root, features) if use_cache else None
    cache = root / ".prmf-cache" / f"{_cache_name(root, features)}-{files_key[:16]}" if use_cache else None
    if use_cache:
        ds = _load_cache(cache, files_key)
        if ds is not None:
            _warn(ds)
            return ds
        stale = [p for p in _stale_caches(cache) if p.is_dir()]
        if stale:
            print(f"{root}: feature files changed since {stale[0]} was written; reading them again", file=sys.stderr)
        shutil.rmtree(cache, ignore_errors=True)  # there but unreadable (a file deleted by hand): rebuilt below
    labels = read_label_file(root / "label-6way.npz")
    frame = [f.upper().endswith(("FRA", "FRM")) for f in features]
    if any(frame) and not all(frame):
        raise DataError(f"features {','.join(features)}: mixes utterance-level and frame-level (-FRA) folders; "
                        "frame-level models need all three -FRA (MERBench's frm_unalign)")
    feat_type = "frm" if any(frame) else "utt"
    ds = Dataset(dataset_name, features, feat_type)
    for s in SPLITS:
        key = f"{s}_corpus"
        if key not in labels:
            continue
        names, emos, vals = _label_arrays(labels[key], f"{root / 'label-6way.npz'}:{key}")
        loaded = [_load_feature(root / "features" / f, names) for f in features]
        ds.splits[s] = Split(names, [x for x, _ in loaded], [n for _, n in loaded], emos, vals)
    if "train" not in ds.splits:
        raise DataError(f"{root / 'label-6way.npz'}: no train_corpus")
    for i, f in enumerate(features):  # every split must agree on each modality's dimension
        dims = {s: sp.inputs[i].shape[-1] for s, sp in ds.splits.items()}
        if len(set(dims.values())) > 1:
            raise DataError(f"{root / 'features' / f}: feature dimension differs between splits {dims}")
    ds.warnings = _absurd_values(root, ds)
    _warn(ds)
    if use_cache:
        _save_cache(cache, ds, files_key)
    return ds


def _check_folder(path: Path):
    """A feature folder that is there and readable, else a DataError saying which and why."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            return
        raise DataError(f"{path}: not a folder (a feature folder holds one SAMPLE.npy per sample)")
    except FileNotFoundError:
        raise DataError(f"{path}: feature folder not found") from None
    except OSError as e:  # a symlink loop (ELOOP), no permission
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _warn(ds: Dataset):
    for w in ds.warnings:
        print(f"warning: {w}", file=sys.stderr)
