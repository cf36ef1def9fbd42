"""The result store (layout: prmf/store/files.py). Every writer and reader of a store goes through
this package: its paths, "is this trial stored", the clean aggregate rows, and the upgrade of
files written by earlier versions (prmf.compat).
"""
from ..compat import SCHEMA_VERSION  # noqa: F401
from .files import (DISK_FULL, RESULT_KEY, SCHEMA_KEY, StoreError, atomic_write, check_writable,  # noqa: F401
                    completed_trials, config_json, is_store, is_stored, predictions_dir, prediction_name,
                    read_part, table_files, timestamp, trial_path, umask, write_problem, write_table, write_trial)
from .table import (CLEAN_AGGREGATE, clean_rows, cv_emoval, index_path, read_epochs, read_results,  # noqa: F401
                    read_table, read_trial, refresh, stores, trial_result)
