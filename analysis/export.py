"""The paper table in the formats a lab pastes it into: Markdown, CSV, LaTeX (booktabs) and JSON.

All four are views of one wide table per (data set, feature set): a row per method, a column per
split and metric, as the paper's table. LaTeX marks the best value of each column in bold.
"""
import io

import pandas as pd

FORMATS = ("md", "csv", "latex", "json")
SUFFIX = {"csv": "csv", "latex": "tex", "json": "json"}
METRICS = (("f1", "F1"), ("acc", "ACC"))


def wide_tables(best: pd.DataFrame, splits):
    """[((dataset, features), DataFrame[Method, 'cv F1', 'cv ACC', ...])], in the rows' order."""
    out = []
    for (dataset, features), table in best.groupby(["dataset", "features"], sort=False):
        rows = []
        for name, cells in table.groupby("display_name", sort=False):
            by_split = cells.drop_duplicates("split").set_index("split")
            row = {"Method": name}
            for split in splits:
                for key, label in METRICS:
                    row[f"{split} {label}"] = by_split[key].get(split)
            rows.append(row)
        out.append(((dataset, features), pd.DataFrame(rows)))
    return out


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def to_csv(best, splits) -> str:
    """One CSV for every table, with the data set and feature set as leading columns."""
    frames = [t.assign(dataset=d, features=f) for (d, f), t in wide_tables(best, splits)]
    df = pd.concat(frames, ignore_index=True)
    df = df[["dataset", "features", *[c for c in df.columns if c not in ("dataset", "features")]]]
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue().rstrip("\n")


def to_latex(best, splits) -> str:
    """One booktabs `table` per (data set, feature set); the best of each column in bold."""
    out = []
    for (dataset, features), table in wide_tables(best, splits):
        numeric = [c for c in table.columns if c != "Method"]
        styled = (table.style.hide(axis="index")
                  .format("{:.4f}", subset=numeric, na_rep="--")
                  .format(escape="latex", subset=["Method"])
                  .highlight_max(subset=numeric, props="textbf:--rwrap;"))
        tabular = styled.to_latex(hrules=True, column_format="l" + "r" * len(numeric))
        out.append("\\begin{table}[t]\n\\centering\n"
                   f"\\caption{{{_latex_escape(str(dataset))}, features {_latex_escape(str(features))}}}\n"
                   f"{tabular}\\end{{table}}")
    return "\n\n".join(out)


def write_tables(out_dir, fmt, tables: dict) -> list:
    """Each DataFrame of `tables` as OUT/NAME.csv|.tex|.json (md: nothing, report.md has them).
    These are long tables (a row per group and split), so nothing is bolded: a column's maximum
    would mix splits. Returns the paths written."""
    if fmt == "md":
        return []
    paths = []
    for name, df in tables.items():
        path = out_dir / f"{name}.{SUFFIX[fmt]}"
        if fmt == "csv":
            df.to_csv(path, index=False, float_format="%.4f")
        elif fmt == "json":
            df.to_json(path, orient="records", indent=1, double_precision=6)
        else:
            numeric = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
            styled = df.style.hide(axis="index").format("{:.4f}", subset=numeric, na_rep="--")
            styled = styled.format(escape="latex", subset=[c for c in df.columns if c not in numeric])
            path.write_text(styled.format_index(escape="latex", axis=1).to_latex(hrules=True), encoding="utf-8")
        paths.append(path)
    return paths
