# One-command set-up: every target builds the local virtual environment first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: env test demo bench clean-env

env: $(STAMP)

# torch is pinned to the builds pip can serve on CPU-only machines; pip picks the rest from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: env
	$(PY) -m pytest -n 2 --dist loadgroup

bench: env
	$(PY) benchmarks/step_time.py

clean-env:
	rm -rf $(VENV)
