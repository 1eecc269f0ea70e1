# Two entry points (see README): `make report` and `make test`.
# Both create the virtual environment, install the pinned requirements and, where the
# machine has apt and we are root, Debian's dataset-fashion-mnist package, and Chromium with a Japanese font
# for the report's browser test and screenshots (best effort: without them that test is skipped with the reason).
# pip installs without byte-compiling (--no-compile), then compileall compiles the venv on every core: 47 + 24 s
# instead of pip's single-threaded 101 s on the 2-core machine.  The .pyc files must exist: where
# PYTHONDONTWRITEBYTECODE is set (as on our machines) nothing would cache them, and every notebook kernel and worker
# process would compile torch and coremltools again (importing stage 06 took 13-15 s instead of 5).  A file that
# does not compile (a package's Python 2 example) is skipped, as pip skips it.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= resnet
ARGS ?=

.PHONY: report test setup data browser clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-compile --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-compile --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null || true
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed data browser

data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null 2>&1 \
	   && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
	  || echo "warning: could not install dataset-fashion-mnist; digits-only runs still work"; fi

browser:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -d /usr/share/fonts/opentype/ipaexfont-gothic ]; } \
	   && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium fonts-ipaexfont-gothic >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium fonts-ipaexfont-gothic >/dev/null)) \
	  || echo "warning: could not install chromium and fonts-ipaexfont-gothic; the report's browser test will skip"; fi

report: setup
	$(PY) -m playbook run --model $(MODEL) $(ARGS)

test: setup
	TQDM_DISABLE=1 $(PY) -m pytest

clean:
	rm -rf build .pytest_cache
