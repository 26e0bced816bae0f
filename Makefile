# Everything a fresh machine needs comes from these targets; nothing is installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit venv kafka-jars kafka-up kafka-down ebpf-deps bench eval k8s-render clean

# The main job on the embedded default: a simulated fleet, no Kafka, nothing else running.
run: $(STAMP)
	$(BIN)/flowattr run --embedded

# The whole suite: unit, integration (real Kafka broker, real eBPF as root, real processes), k8s.
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

# BCC and kernel headers from Debian, tracefs and bpffs mounted, bcc importable from the venv (root).
ebpf-deps: $(STAMP)
	sh scripts/ebpf-deps.sh $(VENV)

eval: $(STAMP)
	$(BIN)/python -m bench.accuracy

bench: $(STAMP) kafka-jars ebpf-deps
	$(BIN)/python -m bench.dataflow_bench
	$(BIN)/python -m bench.latency
	$(BIN)/python bench/exporter_bench.py

k8s-render: $(STAMP)
	@mkdir -p out/k8s
	@for d in k8s/base k8s/overlays/*/; do n=$$(basename $$d); kubectl kustomize $$d > out/k8s/$$n.yaml || exit 1; echo "out/k8s/$$n.yaml"; done

clean:
	rm -rf $(VENV) out broker/run
