# `make demo` and `make test` work on a fresh machine: they create .venv and install into it the first time,
# and again only when pyproject.toml or setup.py change (stamp files inside .venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchaudio are pinned to a pair known to work together here (pip takes both from the local disk).
TORCH_PINS := torch==2.14.1 torchaudio==2.11.0
PIP := $(BIN)/python -m pip --disable-pip-version-check
PYTEST_ARGS ?= -q -n 2 tests/
DEMO_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help demo test bench bench-tiles bench-variants sass-counts bench-ddp bench-longgen bench-gen gen-profile bench-species bench-piano test-gpu clean

help:  ## list the targets
	@echo "make demo    train a small Mamba LM on yeast chromosome I on the CPU (a few minutes), then sample from it"
	@echo "make test    run the test suite (pytest, 2 workers)"
	@echo "             options through DEMO_ARGS='--minutes 1' and PYTEST_ARGS='-q -x tests/test_cli.py'"
	@echo "make bench   GPU: selective-scan timings against the reference CUDA kernel (BENCHMARKS.md)"
	@echo "make test-gpu GPU: the Triton and CUDA tests at GPU shapes (and DDP/FSDP with 2 GPUs)"
	@echo "             on a machine with the project already installed: make bench RUN_PY=python3"
	@echo "make bench-tiles    GPU: fused scan's tile shapes (tokens per tile, warps) timed at the long configs"
	@echo "make bench-variants VARIANTS='new=rows:FILE'  GPU: edited copies of the scan's kernel modules against the package's own"
	@echo "make sass-counts    any machine: registers, spills, shuffles of the scan's and generation's kernels for sm_90"
	@echo "make bench-ddp      2 GPUs: DNA pretraining tokens/s on 1 and 2 GPUs at L = 2^16, 2^20 (benchmarks/)"
	@echo "make bench-longgen  GPU: 1 Mb of DNA and 4 x 60 s of audio generated, checked finite (benchmarks/)"
	@echo "make bench-gen      GPU: the persistent U-Net generation kernel's tests and speed, every launch shape"
	@echo "make gen-profile    GPU (or CPU): where a generated position's time goes, kernel by kernel (benchmarks/)"
	@echo "make bench-species  GPU: species accuracy at 2^18 bases, resumable (run again after a time limit)"
	@echo "make bench-piano PIANO=DIR  GPU: piano bits per sample against window length, resumable"
	@echo "make clean   remove build artifacts and caches (keeps $(VENV))"
	@echo "The first demo/test creates $(VENV) with $(PYTHON) and installs the project into it (several minutes)."

demo: $(VENV)/.installed
	$(BIN)/mba demo $(DEMO_ARGS)

# Debian packages some recipes call (espeak-ng renders the spoken-digits stand-in, fluidsynth with the GM soundfont
# the piano one): installed with apt-get when this runs as root on Debian/Ubuntu, else their tests skip with the reason.
SYSTEM_PACKAGES := espeak-ng fluidsynth fluid-soundfont-gm

test: $(VENV)/.installed-test
	@for pkg in $(SYSTEM_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& timeout 300 apt-get install -y -q $$pkg >/dev/null 2>&1; } || echo "$$pkg is not installed: its tests will be skipped"; done
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The project and its runtime dependencies. The build requirements of pyproject.toml go into the venv too, so that
# builds with --no-build-isolation (tests/test_package.py builds a wheel) work.
$(VENV)/.installed: pyproject.toml setup.py | $(BIN)/python
	$(PIP) install 'setuptools>=68' wheel $(TORCH_PINS)
	$(PIP) install -e . $(TORCH_PINS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]' $(TORCH_PINS)
	touch $@

# GPU targets: they run with the interpreter that has the project (RUN_PY), without creating .venv.
RUN_PY ?= $(BIN)/python

bench:
	$(RUN_PY) -m mamba_bio_audio.kernels.bench --write BENCHMARKS.md

bench-tiles:
	$(RUN_PY) benchmarks/scan_tile_sweep.py

bench-variants:
	$(RUN_PY) benchmarks/scan_variants.py $(VARIANTS)

sass-counts: $(VENV)/.installed
	$(BIN)/python benchmarks/sass_counts.py

bench-ddp:
	bash benchmarks/ddp_throughput.sh 16 20

bench-longgen:
	bash benchmarks/long_generation.sh dna audio

bench-gen:
	bash benchmarks/generation_gpu.sh

gen-profile:
	$(RUN_PY) benchmarks/generation_profile.py $(PROFILE_ARGS)

bench-species:
	bash benchmarks/species_long.sh

bench-piano:
	PIANO=$(PIANO) bash benchmarks/piano_curve.sh

test-gpu:
	$(RUN_PY) -m pytest -q tests/test_selective_scan_triton.py tests/test_cuda.py tests/test_unet_generate.py tests/test_multi_gpu.py

clean:
	rm -rf build dist .pytest_cache *.egg-info mamba_bio_audio.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
