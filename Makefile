# One-command set-up: every target builds the local virtual environment first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: env test test-fast browser demo bench notebooks html clean-env install-jemalloc

# jemalloc (Debian's libjemalloc2) under the long CPU jobs (demo, bench, notebooks), where it is
# installed: with freed pages kept instead of returned to the kernel, the large tensors a step
# allocates afresh stop page-faulting (docs/TRAINING.md, "Allocator"). Not under `test` (the
# tests check results, not speed, and run with the system's malloc). `make demo JEMALLOC=` opts out.
JEMALLOC      ?= $(shell for f in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
                   $$(ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 /{print $$NF}'); \
                   do test -f "$$f" && { echo "$$f"; break; }; done)
JEMALLOC_CONF ?= oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1
WITH_JEMALLOC  = $(if $(JEMALLOC),LD_PRELOAD="$(JEMALLOC)$${LD_PRELOAD:+ $$LD_PRELOAD}" \
                   MALLOC_CONF=$(JEMALLOC_CONF))

env: $(STAMP)

# torch is pinned to the builds pip can serve on CPU-only machines; pip picks the rest from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Two steps, both always run; the target fails when either fails or collects no test (exit 5).
# 1. every test that starts no Jupyter kernel, on two pytest workers with one math thread each (on
#    a 2-core machine more threads only contend); --dist loadfile keeps a test file on one worker;
# 2. every test marked `kernel` (nbval's notebooks, papermill, the browser test: conftest.py) in one
#    serial process, so no two kernels ever start at the same moment.
test: env browser
	@OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m "not kernel"; a=$$?; \
	OMP_NUM_THREADS=1 $(PY) -m pytest -m kernel --durations=12; b=$$?; \
	echo "make test: tests without kernels exited $$a, kernel tests exited $$b"; \
	test $$a -eq 0 && test $$b -eq 0

# Between commits: every test that starts no kernel, no subprocess run of the CLI and is not marked
# slow, on two workers (within 5 minutes on a 2-core machine; CONTRIBUTING.md). CI runs `make test`.
test-fast: env
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -n 2 --dist loadfile -m "not kernel and not subprocess and not slow"

# Debian's Chromium, its driver and MathJax 2 for the browser test (tests/test_browser.py), where
# missing: installed with apt-get when this runs as root; otherwise those tests skip and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	    && test -f /usr/share/javascript/mathjax/MathJax.js; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium, chromium-driver and libjs-mathjax (apt-get) for the browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver libjs-mathjax >/dev/null; } \
	    || echo "apt-get failed: the browser test will skip"; \
	else echo "chromium / chromium-driver / libjs-mathjax missing and not installable here" \
	  "(needs root and apt-get): the browser test will skip"; fi

# The main job: a short MLVICX pretraining (teaching preset) on the embedded synthetic data.
demo: env
	$(WITH_JEMALLOC) $(PY) -m mlvicx_core.cli demo

bench: env
	$(WITH_JEMALLOC) $(PY) benchmarks/step_time.py
	$(WITH_JEMALLOC) $(PY) benchmarks/pretrain_throughput.py
	$(WITH_JEMALLOC) $(PY) benchmarks/data_throughput.py

# Re-execute the committed notebooks at their default parameters (outputs shown on code hosts).
notebooks: env
	$(WITH_JEMALLOC) $(PY) notebooks/build.py

# Debian's libjemalloc2 (apt-get, as root) for the targets above; a no-op where it is present.
install-jemalloc:
	@if [ -n "$(JEMALLOC)" ]; then echo "jemalloc present: $(JEMALLOC)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing libjemalloc2 (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 \
	    >/dev/null; \
	else echo "install-jemalloc needs root and apt-get; install your system's jemalloc package" \
	  "(Debian/Ubuntu: libjemalloc2) and make finds it (or pass JEMALLOC=/path/libjemalloc.so.2)"; \
	  exit 1; fi

# The committed notebooks as HTML pages that render their formulas offline: build/html/ holds the
# pages and a copy of Debian's MathJax (libjs-mathjax, installed with apt-get where missing).
html: env
	@test -f /usr/share/javascript/mathjax/MathJax.js || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjs-mathjax >/dev/null; }
	$(PY) notebooks/export_html.py build/html

clean-env:
	rm -rf $(VENV)
