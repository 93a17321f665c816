# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make run    installs everything and runs the main job
#   make test   installs everything and runs the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := espeak-ng chromium nginx

.PHONY: run test install system-deps bench clean

run: install
	$(BIN)/whisper-service serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

# CTranslate2 picks its int8 backend by CPU vendor: Intel MKL on Intel, oneDNN elsewhere, and
# model outputs differ slightly between them. The model-dependent tests run a second time under
# other arithmetic, so a pass here means a pass on any x86 machine: oneDNN on Intel; elsewhere
# GENERIC kernels, because MKL on AMD takes 4x as long (bench/backends.py covers all three).
# A run that forced a backend itself runs again on the default one.
OTHER_BACKEND := $(shell if [ -n "$$CT2_USE_MKL$$CT2_FORCE_CPU_ISA" ]; then \
	echo -u CT2_USE_MKL -u CT2_FORCE_CPU_ISA; \
	elif grep -q GenuineIntel /proc/cpuinfo; then echo CT2_USE_MKL=0; \
	else echo CT2_FORCE_CPU_ISA=GENERIC; fi)

test: install
	$(BIN)/pytest
	env $(OTHER_BACKEND) $(BIN)/pytest -m "(integration or e2e) and not once"

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
	$(BIN)/python bench/backends.py
	$(BIN)/python bench/transcribe.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/capacity.py
	$(BIN)/python bench/memory.py --suite

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
