# Two entry points for a fresh machine: `make demo` and `make test`.
# A project-local .venv is created unless a virtual environment is already active.
SHELL := /bin/bash
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PYTHON := $(VENV)/bin/python
SDRT := $(VENV)/bin/sdrt
STAMP := $(VENV)/.sd-struct-rt-installed
# torch first and pinned: an unpinned torch drags several GB of CUDA wheels.
TORCH := torch==2.13.0
EXTRAS := cpu,openvino,serve,spacy,scene-graph,stanza,test
# The demo draws with the shapes model, trained here, whose pictures the geometric scorer can
# check (tests/test_demo.py does); its folder records the guidance and steps it draws best at.
DEMO_MODEL := shapes
DEMO_PROMPT := a red circle and a blue square
DEMO_SEED := 7

.PHONY: install demo test bench clean

$(PYTHON):
	python3 -m venv $(VENV)

# PYTHONWARNINGS=ignore: setuptools explains editable installs at length on every install;
# errors still show.
$(STAMP): pyproject.toml Makefile | $(PYTHON)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH)
	PYTHONWARNINGS=ignore $(PYTHON) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# Engines for the demo model on the best backend here (TensorRT with a GPU, else ONNX Runtime),
# then one image generated on them.
demo: install
	@mkdir -p out
	$(SDRT) build-engine --model $(DEMO_MODEL) --backend auto --out engines/$(DEMO_MODEL)
	$(SDRT) generate "$(DEMO_PROMPT)" --engine engines/$(DEMO_MODEL) --seed $(DEMO_SEED) --out out/demo.png

test: install
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest -q

clean:
	rm -rf out build *.egg-info .pytest_cache
