"""Data: MERBench dataset roots and the generated built-in set, through one reader."""
from .merbench import CLASSES, PAPER_FEATURES, DataError, Dataset, Split, load_merbench, read_label_file


def load_data(data, features=None, profile="small", seed=0) -> Dataset:
    """`data` is a MERBench root, or 'synthetic' for the built-in set (generated once, cached)."""
    if data == "synthetic":
        from . import synthetic
        return load_merbench(synthetic.ensure(profile, seed), features or synthetic.FEATURES[profile],
                             dataset_name="MER2023-synthetic")
    return load_merbench(data, features or PAPER_FEATURES)
