# Everything a fresh machine needs comes from these targets; nothing is installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit venv kafka-jars kafka-up kafka-down ebpf-deps bench eval k8s-render clean

run: $(STAMP)
	$(BIN)/flowattr run --embedded

test: $(STAMP) kafka-jars ebpf-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,eval]'
	touch $@

kafka-jars: $(STAMP)
	$(BIN)/python broker/launch.py fetch

kafka-up: kafka-jars
	$(BIN)/python broker/launch.py up

kafka-down: $(STAMP)
	$(BIN)/python broker/launch.py down

clean:
	rm -rf $(VENV) out broker/run

eval: $(STAMP)
	$(BIN)/python -m bench.accuracy
