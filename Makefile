# Everything installs from scratch: Debian packages, a virtualenv, the package.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := softhsm2 p11-kit opensc gnutls-bin libengine-pkcs11-openssl openjdk-17-jre-headless
# The lab's own p11-kit (0.25.5 + hacli's RPC patch; see docs/lab.md).
P11KIT_PREFIX := $(CURDIR)/$(VENV)/p11-kit
P11KIT_STAMP := $(P11KIT_PREFIX)/.hacli-build-stamp

.PHONY: test demo install deps p11kit lint bench bench-journal soak completions clean

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Builds once; the script's own stamp check makes a later run a no-op.
p11kit: deps
	@packaging/p11-kit/build.sh $(P11KIT_PREFIX)

install: deps p11kit $(STAMP)

test: install
	$(VENV)/bin/ruff check hacli tests bench scripts
	$(VENV)/bin/mypy hacli
	$(PY) -m pytest -q

demo: install
	@$(PY) scripts/demo.py

lint: install
	$(VENV)/bin/ruff check hacli tests bench scripts
	$(VENV)/bin/mypy hacli

# The bench extra (matplotlib, for the pictures) goes into .venv only for `make bench`.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

# BENCH_ARGS go to ha_bench.py, e.g. BENCH_ARGS="--seconds 0.3 --rounds 2 --json bench.json";
# JOURNAL_BENCH_ARGS to mp_journal.py, e.g. JOURNAL_BENCH_ARGS="--rounds 2 --sequences 3";
# PICTURES_ARGS to pictures.py, e.g. PICTURES_ARGS="--seconds 1 --timeline 20"
bench: install $(BENCH_STAMP)
	$(PY) bench/startup.py
	$(PY) bench/ha_bench.py $(BENCH_ARGS)
	$(PY) bench/ha_logic.py
	$(PY) bench/serve_bench.py
	$(PY) bench/mp_journal.py $(JOURNAL_BENCH_ARGS)
	$(PY) bench/pictures.py $(PICTURES_ARGS)

# the multi-part replay journal's cost alone (A/B: journal on, off)
bench-journal: install
	$(PY) bench/mp_journal.py $(JOURNAL_BENCH_ARGS)

soak: install
	$(PY) -m pytest -q -m soak tests/test_soak.py
	$(PY) bench/soak.py --seconds $${SOAK_SECONDS:-60} --mode activeBasic
	$(PY) bench/soak.py --seconds $${SOAK_SECONDS:-60} --mode activeEnhanced
	$(PY) bench/confsoak.py --runs $${CONFSOAK_RUNS:-1000} --concurrency 16

completions: install
	$(PY) scripts/gen_completions.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
