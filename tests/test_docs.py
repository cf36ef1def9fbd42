"""The docs (README.md, docs/*.md) against the code: they stand on their own (no reference to a
document outside the repository), every PRMF_* variable and every flag of ours they name exists in
the code, and the lists they write out (the keys members of a pack may differ in, the presets of
the paper's table) are the code's."""
import argparse
import importlib
import re
import sys
from pathlib import Path

import pytest

from prmf.config import MEMBER_KEYS, PRESETS
from sweeps.plan import MEMBER_NOTE

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = [REPO / "Makefile", *(p for d in ("prmf", "sweeps", "analysis", "cluster", "slurm", "benchmarks")
                              for p in (REPO / d).rglob("*") if p.suffix in (".py", ".sh"))]
# Our command lines: module -> how main() is called (argv where it takes one).
CLIS = ["prmf.train", "prmf.data.synthetic", "sweeps.ablation", "sweeps.grid", "analysis.best_results",
        "analysis.report", "cluster.wait_for_nodes", "cluster.local_slurm", "benchmarks.sweep_packing",
        "benchmarks.sweep_overhead", "benchmarks.precision_table", "benchmarks.gpu_check", "benchmarks.one_config",
        "benchmarks.grid_throughput"]
# Flags of other tools the docs show (sbatch/srun/sinfo/scontrol, ray, pip, pytest, ssh, make, tar, pytest).
OTHER_TOOLS = {
    "slurm": {"--nodes", "--gpus-per-node", "--cpus-per-task", "--time", "--test-only", "--signal", "--overlap", "--gres",
              "--gpus", "--partition", "--account", "--qos", "--mem", "--job-name", "--output", "--requeue",
              "--open-mode", "--ntasks-per-node", "--batch", "--parsable", "--dependency", "--exclusive"},
    "ray": {"--head", "--block", "--port", "--num-cpus", "--num-gpus", "--temp-dir", "--include-dashboard",
            "--dashboard-host", "--node-ip-address", "--disable-usage-stats", "--generate"},
    "pip and python": {"--no-deps", "--index-url", "--python", "--without-pip", "--upgrade"},
    "pytest": {"--timeout"},
    "the published scripts (train_v2.sh, main-release.py)": {"--weight_decay", "--num_epochs", "--early_stop", "--l2",
                                                              "--epochs"},
    "tensorboard, apptainer, nsenter": {"--logdir", "--nv", "--net"},
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def doc_text():
    return {p.relative_to(REPO).as_posix(): p.read_text() for p in DOCS}


def test_docs_name_no_document_outside_the_repository():
    """No specification sections, seed document numbers or issue numbers: a reader has none of them."""
    outside = re.compile(r"(?<![A-Z_])SPEC\b|§|\b[Ii]ssues? #?\d+|seeds?/0\d\d|\b00\d(?:'s|\s§|\slines)|\bseeds' ")
    found = [f"{name}:{n}: {line.strip()[:100]}" for name, text in doc_text().items()
             for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not found, "\n".join(found)


def test_every_environment_variable_in_the_docs_is_read_by_the_code():
    tests = [p for p in (REPO / "tests").glob("*.py") if p.name != Path(__file__).name]  # test settings, e.g. PRMF_SHARED
    code = "\n".join(p.read_text() for p in [*CODE, *tests])
    named = {v for text in doc_text().values() for v in re.findall(r"\bPRMF_[A-Z0-9_]*[A-Z0-9]", text)}
    assert named, "no PRMF_ variable found in the docs"
    missing = sorted(v for v in named if not re.search(rf"\b{v}\b", code))
    assert not missing, f"named in the docs, read nowhere in the code: {missing}"


class Parsed(Exception):
    pass


def our_flags(monkeypatch) -> set:
    """Every option of our command lines, as their --help lists them (parsers caught as they parse)."""
    def caught(self, *args, **kwargs):
        raise Parsed(self.format_help())
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", caught)
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])
    flags = set()
    for name in CLIS:
        main = importlib.import_module(name).main
        with pytest.raises(Parsed) as e:
            main()
        flags |= set(FLAG.findall(str(e.value)))
    from cluster import slurm
    flags |= set(FLAG.findall(slurm.__doc__))  # prmf-slurm's own
    return flags | set(FLAG.findall((REPO / "cluster" / "start_local_cluster.sh").read_text()))  # its usage and `case`


def test_every_flag_in_the_docs_is_one_of_our_commands_or_a_named_tools(monkeypatch):
    ours = our_flags(monkeypatch)
    assert {"--pack", "--experiments", "--grid", "--result-dir", "--check", "--fidelity"} - ours <= {"--fidelity"}
    others = set().union(*OTHER_TOOLS.values())
    unknown = {}
    for name, text in doc_text().items():
        for flag in FLAG.findall(text):
            if flag not in ours and flag not in others:
                unknown.setdefault(flag, name)
    assert not unknown, f"flags the docs name that no command here has: {unknown}"


def test_the_member_keys_in_the_docs_are_the_codes():
    """Every "differ only in ..." is the driver's own phrase, and the README's list of keys is
    prmf.config.MEMBER_KEYS."""
    phrase = ", ".join(MEMBER_NOTE[:-1]) + " or " + MEMBER_NOTE[-1]
    seen = 0
    for name, text in doc_text().items():
        flat = " ".join(text.split())
        for m in re.finditer(r"differ only in ((?:[\w ,]|and its)+?)(?: are| train| \(| share)", flat):
            if "loss weights" in m.group(1):
                seen += 1
                assert m.group(1).rstrip(",") == phrase, f"{name}: '{m.group(1)}' is not '{phrase}'"
    assert seen >= 3
    readme = " ".join((REPO / "README.md").read_text().split())
    listed = re.search(r"the config keys ((?:`\w+`,? ?)+)", readme).group(1)
    assert tuple(re.findall(r"`(\w+)`", listed)) == MEMBER_KEYS


def test_the_readme_presets_table_is_the_codes():
    """The README's table of the seven rows: the presets in prmf.config.PRESETS, in order, with
    their model, VAE weights, proxy temperature and modality dropout."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| preset | row | model |"):].split("\n\n")[0].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert [r[0] for r in rows] == list(PRESETS)
    for name, _, model, vae, proxy, dropout, _ in rows:
        p = PRESETS[name]
        v2 = p["model"] == "attention_robust_v2"
        assert v2 == (model == "attention_robust_v2"), name
        assert vae == (f"on ({p['kl_weight']}, {p['recon_weight']})" if p["use_vae"] else "off" if v2 else "–"), name
        assert proxy == (f"on ({p['fusion_temperature']})" if p["use_proxy_attention"] else "off" if v2 else "–"), name
        rate, warmup = p["modality_dropout"], p["modality_dropout_warmup"]
        want = f"{rate:g} ({f'{warmup} epochs' if warmup else 'none'})" if p["use_modality_dropout"] and rate else "none"
        assert dropout == want, name


def test_every_setting_of_the_slurm_launcher_is_in_the_clusters_table():
    read = set()
    for path in [*(REPO / "cluster").glob("slurm*.py"), REPO / "cluster" / "ray_node.py", REPO / "cluster" / "launch_ray.sh"]:
        read |= set(re.findall(r"\bPRMF_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    internal = {"PRMF_LAUNCH_T0", "PRMF_SUBMIT_AS"}  # the batch script's and prmf-slurm's own hand-over
    table = (REPO / "docs" / "CLUSTERS.md").read_text()
    assert not sorted(v for v in read - internal if f"| `{v}` |" not in table)


def test_the_fidelity_presets_table_is_the_codes():
    """docs/FIDELITY.md's table of where each preset value comes from: its values are PRESETS'."""
    text = (REPO / "docs" / "FIDELITY.md").read_text()
    table = text[text.index("| key | attention | attention_robust | Exp1 |"):].split("\n\n")[0].splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")][1:8] == list(PRESETS)
    checked = 0
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        keys = [k.strip() for k in cells[0].split("/")]
        if keys == ["model"] or not all(k in PRESETS["Exp4"] for k in keys):
            continue  # names (the model row: "v2") or abbreviations ("kl / recon / cross_kl")
        for name, cell in zip(PRESETS, cells[1:8]):
            if cell in ("–", "…") or cell.startswith("("):
                continue  # not used by this preset, or as the column before
            for key, value in zip(keys, cell.split(" / ")):
                want = PRESETS[name][key]
                got = {"T": True, "F": False}.get(value, value)
                if isinstance(got, str) and not isinstance(want, str):
                    got = float(got.replace("−", "-"))
                assert got == want, f"FIDELITY.md: {name} {key} is {value}, the preset says {want}"
                checked += 1
    assert checked >= 50
