"""What a sweep is, as plain data: its points (label + config), where and how it runs (RunSettings,
the CLI's flags once parsed) and the Sweep that ablation.py, grid.py and search.py build."""
import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from prmf import names

DEFAULT_STORAGE = Path("runs")  # under the folder the command runs in (the checkout, for the README's commands)
QUICK = dict(epochs=15, batch_size=64, lr=1e-3)  # demo settings: minutes on 2 cores


class SweepError(Exception):
    """A bad sweep input; one line, printed by the CLI."""


@dataclass
class Point:
    """One row of the sweep: an experiment label and its config (seeds multiply it)."""
    label: str
    cfg: object
    tag: str = ""  # trial-id prefix (the experiment name, or 'grid')
    identical: tuple = ()  # other presets with this effective config: trained once, rows stored for each


def parse_pack(arg) -> int | None:
    """--pack as a number of trials per pack (None: auto)."""
    if arg == "auto":
        return None
    if not str(arg).isdigit() or int(arg) < 1:
        raise SweepError(f"--pack {arg!r}: expected auto, or a number of trials >= 1 (1: no packing)")
    return int(arg)


@dataclass
class RunSettings:
    """Where and how a sweep runs (data, folds, seeds, resources, storage), as plain data: the
    CLI's flags once parsed, so nothing below reads the argparse namespace."""
    data: str = "synthetic"
    features: list | None = None
    profile: str = "small"
    dataset_name: str | None = None
    folds: int = 5
    seeds: int = 1
    grace_period: int | None = None
    num_gpus: float = 0
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1
    pack: str = "auto"
    address: str | None = None
    storage: str | None = None
    name: str | None = None
    restart: bool = False
    checkpoint_every: int = 10
    max_failures: int = 3
    dashboard: bool = False
    allow_split_overlap: bool = False

    @classmethod
    def from_args(cls, args):
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["features"] = args.features.split(",") if args.features else None
        return cls(**values)

    def check(self):
        if self.folds < 2 or self.seeds < 1 or self.checkpoint_every < 1 or self.cpus_per_trial <= 0 or \
                (self.grace_period is not None and self.grace_period < 1):
            raise SweepError("--folds must be >= 2, --seeds >= 1, --checkpoint-every >= 1, --grace-period >= 1, "
                             "--cpus-per-trial > 0")
        if self.num_gpus < 0 or (self.gpus_per_trial is not None and not 0 < self.gpus_per_trial <= max(1, self.num_gpus)):
            raise SweepError(f"--gpus-per-trial must be in (0, {max(1, self.num_gpus):g}] and --num-gpus >= 0")
        parse_pack(self.pack)
        if self.name is not None:  # the sweep's folder under --storage: one name, never a path out of it
            try:
                names.check(self.name, "--name")
            except names.BadName as e:
                raise SweepError(f"{e} (it names the sweep's folder under --storage)") from None


@dataclass
class Sweep:
    kind: str  # 'ablation' or 'grid'
    points: list
    args: argparse.Namespace  # the CLI's flags (trackers and searches read their own)
    asha: bool = False
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # printed at start (e.g. rows that cannot differ yet)
    search: object = None  # sweeps/search.OptunaSearch: points proposed while the sweep runs
    run: RunSettings = None

    def __post_init__(self):
        self.run = self.run or RunSettings.from_args(self.args)
