"""Data: MERBench dataset roots and the generated built-in set, through one reader."""
from pathlib import Path

from .merbench import CLASSES, PAPER_FEATURES, DataError, Dataset, Split, load_merbench, read_label_file

# MERBench's data set names; a root folder named like one (any case) is reported in MERBench's spelling.
MERBENCH_DATASETS = ("MER2023", "IEMOCAPFour", "CMUMOSI", "CMUMOSEI", "SIMS", "SIMSv2", "MELD")


def dataset_name(name) -> str:
    """MERBench's spelling of a data set name ('mer2023' -> 'MER2023'), else the name as given."""
    known = {n.lower(): n for n in MERBENCH_DATASETS}
    return known.get(str(name).lower(), str(name))


def load_data(data, features=None, profile="small", seed=0, name=None) -> Dataset:
    """`data` is a MERBench root, or 'synthetic' for the built-in set (generated once, cached).

    The data set's name (it goes into every row and NPZ name) is `name`, else the root folder's
    name in MERBench's spelling; the built-in set's carries its profile (MER2023-synthetic-small),
    since results of two profiles are not comparable."""
    if data == "synthetic":
        from . import synthetic
        ds = load_merbench(synthetic.ensure(profile, seed), features or synthetic.FEATURES[profile])
        ds.name, ds.profile = name or f"MER2023-synthetic-{profile}", profile
        return ds
    ds = load_merbench(data, features or PAPER_FEATURES)
    ds.name = name or dataset_name(Path(data).resolve().name)
    return ds


def check_folds(ds: Dataset, n_folds: int):
    """Stratified k-fold CV needs every class in every fold: k <= the smallest class of train."""
    import numpy as np
    if n_folds < 2:
        raise DataError(f"--folds must be >= 2, got {n_folds}")
    counts = np.bincount(ds.splits["train"].emos, minlength=len(ds.classes))
    present = [(int(c), name) for c, name in zip(counts, ds.classes) if c > 0]
    smallest, name = min(present)
    if n_folds > smallest:
        raise DataError(f"--folds {n_folds} is more than the {smallest} train samples of class {name!r} in {ds.name} "
                        f"(every fold needs each class; use --folds {smallest} or fewer)")
