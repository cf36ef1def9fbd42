"""The build (setup.cfg has everything else) records the commit it was built from in the wheel's
prmf/BUILD_COMMIT: an install from a wheel has no checkout to ask, and every results row and
provenance record names the code that produced it (prmf/provenance.py)."""
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPy(build_py):
    def run(self):
        super().run()
        sys.path.insert(0, str(HERE))
        from prmf.provenance import git_commit  # the standard library only: no dependency needed to build
        commit = git_commit(HERE)
        if commit != "unknown":  # built from an sdist: no commit to record
            Path(self.build_lib, "prmf", "BUILD_COMMIT").write_text(commit + "\n")


setup(cmdclass={"build_py": BuildPy})
