"""Best result per model and split over stores and MERBench result folders, as the paper's table.

    python analysis/best_results.py [--result-dir DIR ...] [--output FILE] [--format md|csv|latex|json]
                                    [--metric acc|f1] [--by model|experiment] [--select-by split|cv]
                                    [--dataset NAME] [--features A+B+C] [--experiment ExpN]
                                    [--include-pruned]

With no --result-dir it reads runs/ under the repo root. Each DIR may be a store of this project
(its Parquet rows are used) or a MERBench result folder (metrics from the NPZ file names).
Results of different data sets or feature sets are never compared: one table per
(data set, feature set). Pruned, failed and diverged trials are left out unless --include-pruned.
"""
import argparse
import sys
from pathlib import Path

from analysis.export import FORMATS, to_csv, to_latex
from analysis.results import (DEFAULT_RESULT_DIR, SELECTION_NOTES, SPLITS, diverged_note, filter_candidates,
                              render_json, render_markdown, scan, select_best)
from prmf.store import StoreError, check_writable


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--result-dir", action="append", metavar="DIR",
                   help=f"a store or MERBench result folder, searched recursively (repeatable; "
                        f"default {DEFAULT_RESULT_DIR})")
    p.add_argument("--output", metavar="FILE", help="also write what is printed to FILE")
    p.add_argument("--format", choices=FORMATS, default="md",
                   help="md: Markdown tables (default); csv: one CSV of every table; latex: booktabs tables, the "
                        "best of each column in bold; json: the table's cells with their source and commit")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
    p.add_argument("--metric", choices=("acc", "f1"), default="acc", help="what 'best' maximises")
    p.add_argument("--by", choices=("model", "experiment"), default="model",
                   help="one row per model (the paper's table, default), or one per ablation preset")
    p.add_argument("--select-by", choices=("split", "cv"), default="split",
                   help="split: best of each split on its own (the paper's rule, default); "
                        "cv: per row the run best on cv, with that run's test splits")
    p.add_argument("--dataset", help="only this data set (e.g. MER2023, MER2023-synthetic-small)")
    p.add_argument("--features", help="only this feature set (names joined by + or ,; any order)")
    p.add_argument("--experiment", help="only this preset (e.g. Exp4)")
    p.add_argument("--include-pruned", action="store_true",
                   help="also count pruned, failed and diverged trials (left out by default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.output:  # checked before the work, not after it
        try:
            if Path(args.output).is_dir():
                raise StoreError(f"--output {args.output} is a folder, not a file")
            check_writable(Path(args.output).absolute().parent, "--output folder")
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    dirs = [Path(d) for d in args.result_dir] if args.result_dir else [DEFAULT_RESULT_DIR]
    for d in dirs:
        if not d.is_dir():
            print(f"error: result dir {d} does not exist or is not a directory", file=sys.stderr)
            return 2
    candidates, left_out = filter_candidates(scan(dirs), args.dataset, args.features, args.experiment,
                                             args.include_pruned)
    best = select_best(candidates, metric=args.metric, by=args.by, select_by=args.select_by)
    diverged = diverged_note(candidates)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(left_out.items()))
    left = f"Left out (stopped before the end; --include-pruned counts them): {counts} trials." if counts else ""
    if best.empty and not diverged:
        filters = [f"--{k} {v}" for k, v in (("dataset", args.dataset), ("features", args.features),
                                            ("experiment", args.experiment)) if v]
        print(f"error: no results found in {', '.join(map(str, dirs))}{' matching ' + ' '.join(filters) if filters else ''}"
              f"{f' (left out: {counts} trials; --include-pruned counts them)' if counts else ''}", file=sys.stderr)
        return 2
    selection = SELECTION_NOTES[args.select_by].format(metric=args.metric.upper()) if not best.empty else ""
    notes = [n for n in (selection, left, diverged) if n]
    if args.format == "md":
        text = "\n\n".join(t for t in (render_markdown(best), "\n".join(notes)) if t)
    else:  # notes on stderr: stdout stays one CSV, LaTeX or JSON document
        text = {"csv": to_csv, "latex": to_latex}[args.format](best, SPLITS) if args.format != "json" else render_json(best)
        for n in notes:
            print(n, file=sys.stderr)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
