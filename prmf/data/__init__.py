"""Data: MERBench dataset roots and the generated built-in set, through one reader."""
import sys
from pathlib import Path

from .. import names
from .merbench import CLASSES, PAPER_FEATURES, DataError, Dataset, Split, load_merbench, read_label_file

# MERBench's data set names; a root folder named like one (any case) is reported in MERBench's spelling.
MERBENCH_DATASETS = ("MER2023", "IEMOCAPFour", "CMUMOSI", "CMUMOSEI", "SIMS", "SIMSv2", "MELD")


def dataset_name(name) -> str:
    """MERBench's spelling of a data set name ('mer2023' -> 'MER2023'), else the name as given."""
    known = {n.lower(): n for n in MERBENCH_DATASETS}
    return known.get(str(name).lower(), str(name))


def load_data(data, features=None, profile="small", seed=0, name=None, allow_overlap=False) -> Dataset:
    """`data` is a MERBench root, or 'synthetic' for the built-in set (generated once, cached).

    The data set's name (it goes into every row and NPZ name) is `name`, else the root folder's
    name in MERBench's spelling; the built-in set's carries its profile (MER2023-synthetic-small),
    since results of two profiles are not comparable. A sample in train and a test split is an
    error unless `allow_overlap` (check_overlap)."""
    if name is not None:  # it goes into every NPZ file name
        try:
            names.check(name, "--dataset-name")
        except names.BadName as e:
            raise DataError(str(e)) from None
    if data == "synthetic":
        from . import synthetic
        root = synthetic.ensure(profile, seed)
        ds = load_merbench(root, features or synthetic.FEATURES[profile])
        ds.name, ds.profile = name or f"MER2023-synthetic-{profile}", profile
    else:
        root = Path(data)
        ds = load_merbench(root, features or PAPER_FEATURES)
        ds.name = name or dataset_name(root.resolve().name)
    check_overlap(ds, Path(root) / "label-6way.npz", allow_overlap)
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


def check_overlap(ds: Dataset, where, allowed=False):
    """A sample in train and in a test split leaks its label into the test score (the table's
    number is inflated): refused unless `allowed` (--allow-split-overlap), then said in one line."""
    import numpy as np
    train = ds.splits["train"].names
    for split, sp in ds.splits.items():
        both = np.intersect1d(train, sp.names) if split != "train" else ()
        if len(both) == 0:
            continue
        shown = ", ".join(map(repr, both[:3].tolist())) + (f" and {len(both) - 3} more" if len(both) > 3 else "")
        if not allowed:
            raise DataError(f"{where}: {len(both)} sample(s) of {split} are also in train ({shown}): a test leak "
                            f"that inflates {split}'s scores; fix the label file, or pass --allow-split-overlap")
        print(f"warning: {where}: {len(both)} sample(s) of {split} are also in train ({shown}); "
              f"kept (--allow-split-overlap)", file=sys.stderr)
