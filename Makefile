# Two entry points on a fresh clone with only python3:
#   make train   sets up .venv and trains the cifar model on CIFAR-10
#   make test    sets up .venv and runs the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRAIN_FLAGS ?= --model=cifar --dataset=cifar10 --model_dir=runs/cifar10 --epochs=24 \
	--learning_rate=0.04 --lr_schedule=cosine --warmup_epochs=2 --label_smoothing=0.1 \
	--ema_decay=0.998 --precision=auto

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
	$(PY) -m pytest -q tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) .pytest_cache
