# Every target creates its own virtual environment on first use (.venv), so a fresh machine needs only
# python3 >= 3.11 and `make`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TORCH_VERSION ?= 2.13.0

.PHONY: install demo demo-photos test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install -q --no-cache-dir "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q --no-cache-dir -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# The main job, offline: the bundled nano model on an image of the synthetic world.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/groundscope detect examples/synth_shapes.png \
		--classes "pink cross,cyan star,blue diamond,yellow diamond,red circle,green heart" --model nano --out demo_out

# Real photos with LLMDet-T (downloads the model once, ~700 MB).
demo-photos: $(STAMP)
	$(BIN)/groundscope detect examples/chelsea.jpg examples/astronaut.jpg examples/coffee.jpg \
		--classes "cat,person,rocket,flag,cup,spoon" --model llmdet-tiny --out demo_out

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_detect.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
