# Everything a fresh machine needs comes from these targets; nothing is installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The per-record modules compiled from their Python source (setup.py); rebuilt whenever a source changes.
CORE := .build/core.built

.PHONY: core run test unit fuzz reliability venv kafka-jars kafka-up kafka-down ebpf-deps cni-plugins bench eval k8s-render dashboard schema clean

# The main job on the embedded default: a simulated fleet, no Kafka, nothing else running.
run: $(CORE)
	$(BIN)/flowattr run --embedded

# The whole suite: unit, integration (real Kafka broker, real eBPF as root, real processes), k8s.
test: $(CORE) kafka-jars ebpf-deps cni-plugins
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: $(CORE)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# The fault and hostile-input tests, then docs/RELIABILITY.md's table from their own figures.
reliability: $(CORE) kafka-jars ebpf-deps
	rm -f out/reliability.json
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_fuzz_records.py tests/integration/test_hostile_input.py \
		tests/integration/test_clean_edges.py tests/integration/test_restarts.py tests/integration/test_bounded_state.py
	$(BIN)/python scripts/reliability_table.py

# The decoder fuzzed for longer than `make test` does: generated records, then coverage-guided bytes.
fuzz: $(CORE)
	FLOWATTR_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_fuzz_records.py -k "not coverage_guided"
	PYTHONPATH=. $(BIN)/python tests/unit/fuzz_decoder.py out/fuzz/corpus -max_total_time=600

venv: $(STAMP)

# docs/records.schema.json from the record Structs of dataflow/records.py; a unit test keeps it current.
schema: $(CORE)
	$(BIN)/python -c "from dataflow.records import schema_json; open('docs/records.schema.json', 'wb').write(schema_json())"

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=77' 'cython>=3.1'
	$(BIN)/pip install -q -e '.[test,eval]'
	touch $@

core: $(CORE)

$(CORE): $(STAMP) setup.py $(wildcard dataflow/*.py) $(wildcard dataflow/*.pxd)
	$(BIN)/python setup.py -q build_ext --inplace -j 2
	mkdir -p $(dir $@) && touch $@

kafka-jars: $(STAMP)
	$(BIN)/python broker/launch.py fetch

kafka-up: kafka-jars
	$(BIN)/python broker/launch.py up

kafka-down: $(STAMP)
	$(BIN)/python broker/launch.py down

# BCC and kernel headers from Debian, tracefs and bpffs mounted, bcc importable from the venv (root).
ebpf-deps: $(STAMP)
	sh scripts/ebpf-deps.sh $(VENV)

# The reference CNI plugins and cnitool from their Go modules (the proxy), and flowattr-cni's shim,
# for the CNI tests; built once into .build/cni/bin. Needs Go (a Go older than a module asks for
# fetches the toolchain it names).
CNI_BIN := .build/cni/bin
CNI_PLUGINS_VERSION := v1.9.1
CNI_VERSION := v1.3.0
cni-plugins: $(CNI_BIN)/cnitool $(CNI_BIN)/flowattr-cni

$(CNI_BIN)/cnitool:
	GOBIN=$(CURDIR)/$(CNI_BIN) go install \
	  github.com/containernetworking/plugins/plugins/main/bridge@$(CNI_PLUGINS_VERSION) \
	  github.com/containernetworking/plugins/plugins/ipam/host-local@$(CNI_PLUGINS_VERSION) \
	  github.com/containernetworking/plugins/plugins/main/loopback@$(CNI_PLUGINS_VERSION)
	GOBIN=$(CURDIR)/$(CNI_BIN) go install github.com/containernetworking/cni/cnitool@$(CNI_VERSION)

$(CNI_BIN)/flowattr-cni: exporter/cnishim/main.go exporter/cnishim/go.mod
	cd exporter/cnishim && CGO_ENABLED=0 go build -o $(CURDIR)/$@ .

eval: $(CORE)
	$(BIN)/python -m bench.accuracy

bench: $(CORE) kafka-jars ebpf-deps cni-plugins
	rm -rf out/bench
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.at_rest
	$(BIN)/python -m bench.latency --no-document
	-$(BIN)/python -m bench.exporter_bench
	$(BIN)/python -m bench.render
	$(BIN)/python bench/cni_bench.py

k8s-render: $(STAMP)
	@mkdir -p out/k8s
	@for d in k8s/base k8s/overlays/*/; do n=$$(basename $$d); kubectl kustomize $$d > out/k8s/$$n.yaml || exit 1; echo "out/k8s/$$n.yaml"; done

# The Grafana dashboard drawn from a real local run's scraped metrics -> docs/images/dashboard.png (root).
dashboard: $(CORE) kafka-jars ebpf-deps
	$(BIN)/python scripts/dashboard_picture.py record out/dashboard/recording.ndjson --minutes 4
	$(BIN)/python scripts/dashboard_picture.py draw out/dashboard/recording.ndjson docs/images/dashboard.png

clean:
	rm -rf $(VENV) out broker/run .build/cython $(CORE) dataflow/*.so
