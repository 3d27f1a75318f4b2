# Everything a fresh machine needs: `make demo` runs the MNIST study end to end,
# `make test` runs the test suite. Both create .venv and install camlib on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The offline MNIST copy beside the checkout when present; otherwise download to data/.
DATA ?= $(if $(wildcard ../shared/mnist/MNIST/raw),../shared/mnist,data)
OUT ?= runs/mnist

.PHONY: demo demo-full imagenet binary shortcut test lint docs bench zoo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,docs,examples,zoo]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m examples.mnist --data-root $(DATA) --out $(OUT)

# The whole MNIST study: every training image, 10 epochs per model, every method (SS-CAM,
# IS-CAM and SESS too) ranked on more images; an hour or more on 2 CPU cores.
demo-full: $(VENV)/.installed
	$(PY) -m examples.mnist --data-root $(DATA) --out runs/mnist-full --full

imagenet: $(VENV)/.installed
	$(PY) -m examples.imagenet --out runs/imagenet

binary: $(VENV)/.installed
	$(PY) -m examples.binary --out runs/binary

# MNIST with a shortcut patch: plain training vs a penalty on the differentiable Grad-CAM.
shortcut: $(VENV)/.installed
	$(PY) -m examples.shortcut --data-root $(DATA) --out runs/shortcut

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The model-zoo coverage sweep (issue 17): random-weight models from timm, transformers,
# torchvision video, segmentation-models-pytorch, ultralytics and MONAI; writes the table.
zoo: $(VENV)/.installed
	$(PY) benchmarks/zoo.py --out benchmarks/results/zoo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site build *.egg-info .pytest_cache .ruff_cache
