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

.PHONY: install demo test test-fast test-all gpu-check bench docs docs-cli clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: could not create $(VENV): install the venv module (Debian: apt-get install python3-venv) and rerun" >&2; exit 1; }
	$(PIP) install --quiet --disable-pip-version-check -c $(CONSTRAINTS) $(TORCH_PINS)
	@# The distribution was called `lit` before (PyPI's `lit` is LLVM's tool): an old editable install goes first.
	-@$(PIP) uninstall --quiet --disable-pip-version-check -y lit 2>/dev/null
	$(PIP) install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[flops,export,track,cam,shards,dense,dev,docs]'
	@touch $(STAMP)

# `make demo`: install, get the data, train the built-in demo (`lit train` with no arguments: a small LIT on
# Fashion-MNIST), then draw what its DTMs learned on test images of different classes (and its attention maps when the
# model attends over a grid of at least 4x4 tokens); prints the time of each phase and the files to open.
# The data step, shown as it runs and skipped once the full Fashion-MNIST is on the machine (or with DEMO_FETCH=no, or
# a --data in DEMO_ARGS): assets/datasets/fetch_fashion_mnist.py finds it or downloads it into ~/.cache/litcli/; when
# that fails and make runs as root where apt-get exists, it installs the Debian package dataset-fashion-mnist. With
# neither, the demo trains on the subset shipped in assets/ and its log says so.
DEMO_RUN := runs/demo/$(DEMO_NAME)
# The stage whose attention maps the demo draws (empty: none): the demo model (32 px input, 2x2 patches) attends
# over 4x4 tokens in stage 3 and 2x2 in stage 4.
DEMO_ATTN_STAGE ?= 3
# Extra `lit train` flags, e.g. DEMO_ARGS="--data fashion-mnist-mini --epochs 1" for a quick look.
DEMO_ARGS ?=
DEMO_FETCH ?= yes
demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory install || exit 1; \
	installed=$$(date +%s); \
	if [ "$(DEMO_FETCH)" != no ] && [ -z "$(filter --data%,$(DEMO_ARGS))" ] && \
	   ! $(PY) assets/datasets/fetch_fashion_mnist.py; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "data: installing the Debian package dataset-fashion-mnist instead (apt-get, as root):"; \
	    { apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist; } || \
	      echo "data: not installed; the demo trains on the subset shipped in assets/"; \
	  else \
	    echo "data: the demo trains on the subset shipped in assets/"; \
	  fi; \
	fi; \
	$(VENV)/bin/lit env || exit 1; \
	data_ready=$$(date +%s); \
	$(VENV)/bin/lit train --output runs/demo --name $(DEMO_NAME) $(DEMO_ARGS) || exit 1; \
	trained=$$(date +%s); \
	$(VENV)/bin/lit viz-offsets --checkpoint $(DEMO_RUN)/checkpoints/best.pt --num-images 4 --tokens center \
	  --output $(DEMO_RUN) --name offsets --summary || exit 1; \
	if [ -n "$(DEMO_ATTN_STAGE)" ]; then \
	  $(VENV)/bin/lit attn-maps --checkpoint $(DEMO_RUN)/checkpoints/best.pt --stage $(DEMO_ATTN_STAGE) \
	    --num-images 10000 --output $(DEMO_RUN) --name attention || exit 1; \
	  attention="$(DEMO_RUN)/attention/stage$(DEMO_ATTN_STAGE).png  (Figure 3: attention maps over the test split)"; \
	else \
	  attention="(no attention maps: DEMO_ATTN_STAGE is empty)"; \
	fi; \
	done=$$(date +%s); \
	echo; echo "make demo: install $$((installed - start)) s, data $$((data_ready - installed)) s, training $$((trained - data_ready)) s, figures $$((done - trained)) s"; \
	echo "open:"; \
	echo "  $(DEMO_RUN)/curves.png  (loss, top-1 and learning rate per epoch)"; \
	echo "  $(DEMO_RUN)/offsets/  (Figure 2: where DTM samples, one folder per test image: overview.png, tokens/, offset_magnitude.png)"; \
	echo "  $$attention"; \
	echo "  $(DEMO_RUN)/metrics.csv  $(DEMO_RUN)/checkpoints/best.pt"

# The CI suite: the strict docs build, the import contracts (pyproject.toml [tool.importlinter]), then everything but
# GPU-only tests.
test: install docs
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not gpu"

# Test tiers (markers in pyproject.toml): `slow` marks every test that takes more than a few seconds on a 2-core CPU
# (measured with `pytest --durations=0`: torchrun and SIGKILL subprocess runs, full demo epochs, the augmentation sweeps,
# full-size models, ONNX exports, ...), `gpu` those that need CUDA. `make test` (CI) runs everything but `gpu`;
# `make test-fast`, the edit-run loop, skips `slow` too and takes under 3 minutes on 2 cores; `make gpu-check` runs the
# GPU claims. pytest's exit 5 (no test selected) fails either target.
test-fast: install
	$(PY) -m pytest -q -m "not slow and not gpu"

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
	$(VENV)/bin/lit bench --task retinanet -v ti --threads 2 --repeats 3 --mode infer
	$(VENV)/bin/lit bench --task semantic-fpn -v ti --threads 2 --repeats 3 --mode train
	$(PY) benchmarks/bench_data.py --images 1000 --workers 0,1,2 --rounds 2

# The documentation site (docs/, mkdocs.yml) into site/ with --strict: a broken link or anchor, or a page missing from
# the nav, fails the build. Nothing is fetched. `make docs-cli` regenerates the CLI reference (docs/reference/cli/ and
# its nav) from the Typer app; tests/test_docs.py fails until the committed pages match.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir site
	@echo "docs: site/index.html"

docs-cli: install
	$(PY) docs/gen_cli_reference.py

clean:
	rm -rf $(VENV) .pytest_cache site
