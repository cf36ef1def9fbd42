# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the normal dependency where a GPU is present; elsewhere the pinned CPU-friendly release
# (on this project's CI machines a local CPU build). Override: make TORCH_SPEC='torch==2.6.0'.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,torch==2.13.0)
DEMO_ARGS ?= --quick

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The demo reads only the sweep it has just run (its own store folder, started afresh).
DEMO_STORE ?= runs/demo

demo: venv
	$(PY) sweeps/ablation.py --data synthetic $(DEMO_ARGS) --storage $(DEMO_STORE) --name ablation --restart
	$(PY) analysis/best_results.py --result-dir $(DEMO_STORE)/ablation --by experiment

test: venv
	bash slurm/install-test-slurm.sh
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
