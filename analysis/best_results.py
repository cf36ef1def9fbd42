"""Best result per model and split over stores and MERBench result folders, as the seeds' table.

    python analysis/best_results.py [--result-dir DIR ...] [--output FILE.md] [--json]
                                    [--metric acc|f1] [--by model|experiment]

With no --result-dir it reads runs/ under the repo root. Each DIR may be a store of this project
(its Parquet rows are used) or a MERBench result folder (metrics from the NPZ file names).
"""
import argparse
import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:  # run as a script from any cwd
    sys.path.insert(0, REPO_ROOT)

from analysis.results import DEFAULT_RESULT_DIR, render_json, render_markdown, scan, select_best  # noqa: E402
from prmf.store import StoreError, check_writable  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--result-dir", action="append", metavar="DIR",
                   help=f"a store or MERBench result folder, searched recursively (repeatable; "
                        f"default {DEFAULT_RESULT_DIR})")
    p.add_argument("--output", metavar="FILE", help="also write what is printed to FILE")
    p.add_argument("--json", action="store_true", help="print a JSON array of the best rows instead")
    p.add_argument("--metric", choices=("acc", "f1"), default="acc", help="what 'best' maximises")
    p.add_argument("--by", choices=("model", "experiment"), default="model",
                   help="one row per model, or per model and ablation experiment")
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
            return 1
    candidates = scan(dirs)
    best = select_best(candidates, metric=args.metric, by=args.by)
    if best.empty:
        print(f"error: no results found in {', '.join(map(str, dirs))}", file=sys.stderr)
        return 1
    text = render_json(best) if args.json else render_markdown(best)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
