# Two entry points on a fresh clone with only python3:
#   make train   sets up .venv and trains the cifar model on CIFAR-10
#   make test    sets up .venv and runs the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRAIN_FLAGS ?= --recipe=cifar10 --model_dir=runs/cifar10

.PHONY: setup train test test-slow clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) main.py train $(TRAIN_FLAGS)

test: setup
	$(PY) -m pytest -q -n auto tests

test-slow: setup
	$(PY) -m pytest -q -n auto -m slow tests

clean:
	rm -rf $(VENV) .pytest_cache
