"""What an older prmf-sweep meant: every rule that lets today's code read and resume what earlier
versions wrote, each written once. Adding a config key after results exist is one line in
LATER_KEYS (a result column that is not a config key: LATER_COLUMNS; the store's schema version
follows from them); nothing here imports the project.

Users: prmf.config (trial ids), prmf.store (reading old Parquet files), prmf.engine (checkpoints),
sweeps.driver (a sweep folder's recorded settings).
"""
import pandas as pd

# Config keys added after results had been stored: (the value every earlier trial ran under, the
# store schema version that added the column). Rows of an earlier schema read with that value.
LATER_KEYS = {
    "fidelity": ("design_plan", 3),  # before: the design plan's modality dropout (named 'seeds_code' then)
    "optimizer": ("adamw", 3),
    "lr_schedule": ("plateau", 3),
    "modality_dropout_z": (True, 3),
    "precision": ("fp32", 4),
}
# Result columns added later that are not config keys: (what earlier rows read as, the schema version).
LATER_COLUMNS = {
    "random_streams": ("pack", 5),  # before: one generator fed a whole pack (prmf/models/draws.py)
}
# From this schema on, a key added later is left out of the trial id at its old value, so trials
# stored before it keep their ids, checkpoints and sweep settings (keys of schema 3 changed ids).
IDS_KEPT_FROM = 4
# Config values renamed: {key: {old name: new name}}; stores read the new name, input is refused.
RENAMED = {"fidelity": {"seeds_code": "design_plan"}}
# Store schema versions (in every Parquet file's metadata) whose change is not a later config key:
#   1: aggregate rows had fold = -1; a robustness scenario 'all' repeated the clean rows; the epoch
#      history's validation MSE was `val_val_mse` and it had no sweep or experiment.
#   2: an `is_aggregate` column (fold is null there); no 'all' rows; `val_mse`; sweep and experiment.
#   3: fidelity 'published' became the default; the former default's name 'seeds_code' reads as
#      'design_plan' (RENAMED) and the loop's keys appeared (LATER_KEYS).
#   4: precision (LATER_KEYS).
#   5: random_streams (LATER_COLUMNS): 'member', each member drawing from its own stream, so a
#      trial's numbers do not depend on its pack; rows written before read 'pack'.
SCHEMA_VERSION = max([2] + [since for _, since in (*LATER_KEYS.values(), *LATER_COLUMNS.values())])
# Sweep settings (sweep.json) added since sweeps began to record them: the value older sweeps ran with.
LATER_SETTINGS = {"pack": "auto"}
# The pack checkpoint's format; one of another version is not continued (the pack restarts).
#   3: members' optimiser and schedule follow their config (adam/adamw, constant/plateau).
#   4: per-member random streams: no global generator state (a format-3 pack restarts).
CHECKPOINT_VERSION = 4


def id_dict(cfg: dict) -> dict:
    """A config dict as trial ids, checkpoints and sweep settings compare it: the keys added since
    IDS_KEPT_FROM, at their old value, left out."""
    return {k: v for k, v in cfg.items()
            if k not in LATER_KEYS or LATER_KEYS[k][1] < IDS_KEPT_FROM or v != LATER_KEYS[k][0]}


def with_later_keys(cfg: dict) -> dict:
    """A config dict saved before some keys existed, with their old values."""
    return {**{k: old for k, (old, _) in LATER_KEYS.items()}, **cfg}


def upgrade_results(df: pd.DataFrame, version: int) -> pd.DataFrame:
    """Result rows of schema `version` as this version's."""
    if version < 2 and "fold" in df:
        df = df[df.get("scenario", pd.Series("", index=df.index)) != "all"].copy()  # 'all' repeated clean
        df.insert(df.columns.get_loc("fold"), "is_aggregate", df["fold"] == -1)
        df["fold"] = df["fold"].astype("Int64").mask(df["is_aggregate"])
    later = {k: old for k, (old, since) in {**LATER_KEYS, **LATER_COLUMNS}.items() if version < since}
    if later:
        df = df.copy()
    for key, old in later.items():
        df[key] = df[key].replace(RENAMED.get(key, {})) if key in df else old
    return df


def upgrade_epochs(df: pd.DataFrame, version: int) -> pd.DataFrame:
    """Epoch rows of schema `version` as this version's."""
    if version < 2:
        df = df.rename(columns={"val_val_mse": "val_mse"})
        for i, col in enumerate(("sweep", "experiment")):
            if col not in df:
                df.insert(i, col, None)
    return df
