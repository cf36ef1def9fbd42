# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: pick the build for the machines that will *train*, not the one you build on (a venv
# made on a GPU-less login node is used on GPU nodes):
#   make venv CUDA=12.4      a CUDA 12.4 build (download.pytorch.org/whl/cu124); CUDA=cpu: CPU only
#   make venv TORCH_SPEC='torch==2.6.0'   any requirement
# Unset: a CUDA build where nvidia-smi runs, else the pinned torch==2.13.0 (a CPU build on CI).
# Optional extras: make venv EXTRAS=test,dashboard (Ray's dashboard for --dashboard).
CUDA ?=
EXTRAS ?= test
TORCH_SPEC ?= $(if $(CUDA),torch,$(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,torch==2.13.0))
TORCH_INDEX := $(if $(CUDA),--index-url https://download.pytorch.org/whl/$(if $(filter cpu,$(CUDA)),cpu,cu$(subst .,,$(CUDA))))
# The venv's torch choice is kept in $(VENV)/.torch (line 1 the requirement, line 2 the index
# options). CUDA= or TORCH_SPEC= given to make and differing from it rewrites it, and the venv's
# torch is reinstalled; given neither, the venv keeps its own choice (so `make demo` after
# `make venv CUDA=12.4` does not bring a CPU build back).
TORCH_GIVEN := $(strip $(CUDA)$(filter-out file default undefined,$(origin TORCH_SPEC)))
TORCH_BUILT = $(shell sed -n 1p $(VENV)/.torch)
TORCH_BUILT_INDEX = $(shell sed -n 2p $(VENV)/.torch)
DEMO_ARGS ?= --quick

.PHONY: venv demo lint test bench clean clean-runs FORCE

venv: $(VENV)/.installed

$(VENV)/.torch: FORCE
	@mkdir -p $(VENV) && printf '%s\n%s\n' '$(TORCH_SPEC)' '$(TORCH_INDEX)' > $@.new
	@if [ ! -f $@ ] || { [ -n "$(TORCH_GIVEN)" ] && ! cmp -s $@.new $@; }; then mv $@.new $@; else rm $@.new; fi

$(VENV)/.installed: setup.cfg pyproject.toml $(VENV)/.torch
	test -x $(PY) || python3 -m venv $(VENV)
	@if [ -s $@ ] && ! cmp -s $@ $(VENV)/.torch; then \
	  echo "venv: torch choice changed from '$$(echo $$(cat $@))' to '$$(echo $$(cat $(VENV)/.torch))': reinstalling torch"; \
	  $(PY) -m pip uninstall -q -y torch; fi
	$(PY) -m pip install -q "$(TORCH_BUILT)" $(TORCH_BUILT_INDEX)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	cp $(VENV)/.torch $@

# The demo reads only the sweep it has just run (its own store folder, started afresh).
DEMO_STORE ?= runs/demo

demo: venv
	$(PY) sweeps/ablation.py --data synthetic $(DEMO_ARGS) --storage $(DEMO_STORE) --name ablation --restart
	$(PY) analysis/best_results.py --result-dir $(DEMO_STORE)/ablation --by experiment

# lint: ruff, with the rules in pyproject.toml (installed by the test extra).
lint: venv
	$(VENV)/bin/ruff check .

# test: the linter, then every test. PYTEST_ARGS selects (.ci/run: the fast tier first, then
# PYTEST_ARGS='-m slow' SKIP_LINT=1 for the rest).
SKIP_LINT ?=
PYTEST_ARGS ?=
test: venv $(if $(SKIP_LINT),,lint)
	bash slurm/install-test-slurm.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/grid_throughput.py

# clean: the venv (make venv rebuilds it); results are never part of it.
clean:
	rm -rf $(VENV)

# clean-runs: every sweep's results, checkpoints and Tune state under runs/ (no rebuild brings them back).
clean-runs:
	@echo "deleting runs/ ($$(find runs -type f 2>/dev/null | wc -l) files: every sweep's results under it)"
	rm -rf runs
