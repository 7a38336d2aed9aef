# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SLURM  := /usr/sbin/slurmctld
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo lint

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Fashion-MNIST's original idx files, from Debian's dataset-fashion-mnist (MIT).
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Debian's chromium: the browser the demo-page test drives through playwright (tests/test_app.py).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq chromium

# Debian's Slurm and munge: tests/test_slurm.py runs cells as jobs on a one-node cluster of this machine
# (scripts/local_slurm.sh starts it; the tests skip, saying why, where it cannot start).
$(SLURM):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq slurmctld slurmd slurm-client munge

lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: lint $(CHROMIUM) $(SLURM)
	$(PY) -m pytest

demo: $(STAMP) $(FMNIST)
	$(VENV)/bin/ivit demo --out runs/demo
