# The README's Quickstart: `make demo` and `make test`. Both install into .venv first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
# Exact pins for the install step only (pyproject.toml keeps loose ranges for GPU machines' own stacks).
TORCH_PINS  := torch==2.14.1 torchvision==0.29.1
DEMO_NAME   := demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-all gpu-check bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: could not create $(VENV): install the venv module (Debian: apt-get install python3-venv) and rerun" >&2; exit 1; }
	$(PIP) install --quiet --disable-pip-version-check -c $(CONSTRAINTS) $(TORCH_PINS)
	@# The distribution was called `lit` before (PyPI's `lit` is LLVM's tool): an old editable install goes first.
	-@$(PIP) uninstall --quiet --disable-pip-version-check -y lit 2>/dev/null
	$(PIP) install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[flops,export,track,cam,shards,dev]'
	@touch $(STAMP)

demo: install
	@# The full Fashion-MNIST (Debian package dataset-fashion-mnist) when root and apt are here; else the shipped mini set.
	-@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist || true)
	$(VENV)/bin/lit env
	@# The built-in demo training (small LIT-Ti-layout model, Fashion-MNIST, ~6 min on 2 idle cores), then the
	@# offsets its DTMs learned. PASSIVE: OpenMP threads sleep instead of spinning when they wait, which keeps
	@# 2 threads fast on a shared machine.
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/lit train --output runs/demo --name $(DEMO_NAME)
	$(VENV)/bin/lit viz-offsets assets/photos/chelsea.jpg --checkpoint runs/demo/$(DEMO_NAME)/checkpoints/best.pt \
	  --img-size 64 --output runs/demo/$(DEMO_NAME) --name offsets --summary

# The CI suite: the import contracts (pyproject.toml [tool.importlinter]), then everything but GPU-only tests.
test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not gpu"

# Every GPU claim in one call (benchmarks/gpu_check.py: parts, time limits, JSON report, one table; README
# "Development"). `make gpu-check` uses .venv (installed first if missing, as `make install`); `make gpu-check
# PY=python3` uses that Python as it is, installs nothing and runs the package from this source tree (PYTHONPATH):
# the way to run it on a lent GPU machine with its own stack and no network. Flags: GPU_CHECK_ARGS="--parts dtm,amp
# --out report.json --quick --device cpu ...". Without a CUDA device it prints one line and fails.
GPU_CHECK_ARGS ?=
gpu-check: $(if $(filter command line,$(origin PY)),,install)
	@PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Speed figures (side by side in one run; see README "Benchmarking").
bench: install
	$(PY) benchmarks/bench_dtm.py --threads 2
	$(VENV)/bin/lit bench -v s --compare swin_tiny_patch4_window7_224 --threads 2 -b 16 --mode infer
	$(VENV)/bin/lit bench -v s --compare swin_tiny_patch4_window7_224 --threads 2 -b 16 --mode train --profile
	$(VENV)/bin/lit bench -v ti --compare pvt_v2_b2 --threads 2 -b 16 --mode infer
	$(VENV)/bin/lit bench -v s --compare swin_tiny_patch4_window7_224 --threads 2 -b 1 --img-size 1024 --repeats 2 --mode infer

clean:
	rm -rf $(VENV) .pytest_cache
