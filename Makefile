# One-command set-up: every target builds the local virtual environment first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: env test demo bench notebooks clean-env

env: $(STAMP)

# torch is pinned to the builds pip can serve on CPU-only machines; pip picks the rest from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Two pytest workers, one math thread each: on a 2-core machine more threads only contend.
# --dist loadfile keeps every test file (and every notebook, for nbval) on one worker.
test: env
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

# The main job: a short MLVICX pretraining (teaching preset) on the embedded synthetic data.
demo: env
	OMP_WAIT_POLICY=PASSIVE $(PY) -m mlvicx_core.cli demo

bench: env
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/pretrain_throughput.py
	$(PY) benchmarks/data_throughput.py

# Re-execute the committed notebooks at their default parameters (outputs shown on code hosts).
notebooks: env
	$(PY) notebooks/build.py

clean-env:
	rm -rf $(VENV)
