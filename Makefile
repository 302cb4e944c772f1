# The two set-up commands of README.md. Each creates (or reuses) .venv and installs what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(SUM)
# the tests' engines (Keras, ONNX Runtime, OpenCV, TensorFlow, ...) are installed by `make test` only
TEST_STAMP := $(VENV)/.installed-test-$(SUM)

.PHONY: demo test install fashion-mnist clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

# The demo's data: Debian's dataset-fashion-mnist where apt is usable, else verydeep's SHA-256-checked download.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && \
	   apt-get install -y -qq dataset-fashion-mnist)) >/dev/null 2>&1 || true; fi

demo: $(STAMP) fashion-mnist
	$(BIN)/verydeep reproduce --quick

test: $(TEST_STAMP)
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
