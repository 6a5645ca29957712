# Two commands do everything on a fresh machine (each creates and fills .venv first):
#   make demo   run the default benchmark, write reports/default/, check it against reports/baseline.json
#   make test   run the test suite
# Also: make bench (side-by-side performance benchmarks), make zoo (retrain every reference model).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xaibench-installed
export XAIBENCH_PROGRESS ?= 1

.PHONY: demo test bench zoo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,medical,excel,ray]"
	# the real St. Anna B-ALL FCS file ships in fcsparser 0.2.8, which pins numpy<2: data only, no deps
	$(PY) -m pip install -q --disable-pip-version-check --no-deps fcsparser==0.2.8 || echo "fcsparser 0.2.8 unavailable: the real-FCS smoke test will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xaibench run --out reports/default --force
	$(VENV)/bin/xaibench regress reports/default --baseline reports/baseline.json
	@echo "Report: reports/default/report.html (summary: reports/default/summary.csv)"

# two test processes on the two cores, one torch thread each
test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2 --ignore=tests/benchmarks

# make bench [COMPARE=reports/bench/bench-....json | COMPARE=latest] [BENCH_ARGS="-k occlusion"]:
# one table (ours vs anchor, ours vs limit, machine) printed and saved as reports/bench/bench-<time>-<commit>.json
bench: $(STAMP)
	@mkdir -p reports/bench
	$(VENV)/bin/pytest tests/benchmarks --benchmark-enable -p no:xdist -q --benchmark-json=reports/bench/last-raw.json $(BENCH_ARGS)
	$(PY) -m xaibench.benchtable reports/bench/last-raw.json --save reports/bench $(if $(COMPARE),--compare $(if $(filter latest,$(COMPARE)),,$(COMPARE)),)

zoo: $(STAMP)
	$(VENV)/bin/xaibench zoo train --all

clean:
	rm -rf $(VENV) build dist *.egg-info
