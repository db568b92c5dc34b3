# The README's two commands. Both create .venv on first use and reinstall only when
# pyproject.toml changes, so a second run starts at once.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bitkit-installed
PYTEST_ARGS ?=

.PHONY: demo test install prepare lint clean

demo: $(STAMP)
	$(PY) -m bitkit run notebooks/00_quickstart.ipynb --out runs/quickstart

# pytest exits 5 when it collected no test: that proves nothing, so it fails here on purpose.
test: $(STAMP)
	@HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing on purpose." >&2; exit 1; fi; \
	exit $$rc

install: $(STAMP)

# Before class: pre-train, once, every upstream model the lessons share (cached).
prepare: $(STAMP)
	$(PY) -m bitkit prepare

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "bitkit needs Python >= 3.10; set PYTHON=python3.11 (or newer)." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name bitkit --display-name "bitkit (.venv)" >/dev/null
	@# an editable install skips the package's data files (the wheel's Jupyter config): write it
	$(PY) -m bitkit.jupyter_extension >/dev/null
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check bitkit widgets tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
