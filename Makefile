# Two entry points (see README): `make demo` and `make test`. Both create/refresh .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision pinned to the wheels available offline on this machine class; any torch>=2.4 works.
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install -q "torch>=2.4" torchvision
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ddkit demo

# The report tests render report.html in headless Chromium: .ci/browser installs the Debian package when missing
# (as root or via sudo) or says in one line how to.
test: $(STAMP)
	bash .ci/browser
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .cache
