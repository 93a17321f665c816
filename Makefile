# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make run    installs everything and runs the main job
#   make test   installs everything and runs the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := espeak-ng chromium

.PHONY: run test install system-deps bench clean

run: install
	$(BIN)/whisper-service serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

test: install
	$(BIN)/pytest

install: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get install -y --no-install-recommends $$missing || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; }; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

bench: install
	$(BIN)/python bench/transcribe.py
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/server.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
