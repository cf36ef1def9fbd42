"""Data: MERBench dataset roots and the generated built-in set, through one reader."""
from .merbench import CLASSES, PAPER_FEATURES, DataError, Dataset, Split, load_merbench, read_label_file


def load_data(data, features=None, profile="small", seed=0) -> Dataset:
    """`data` is a MERBench root, or 'synthetic' for the built-in set (generated once, cached)."""
    if data == "synthetic":
        from . import synthetic
        return load_merbench(synthetic.ensure(profile, seed), features or synthetic.FEATURES[profile],
                             dataset_name="MER2023-synthetic")
    return load_merbench(data, features or PAPER_FEATURES)


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
