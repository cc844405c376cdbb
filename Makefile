# On a fresh machine: `make install`, then `make demo`, `make test` or `make serve` (each installs if needed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test install bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 resolves to the CPU wheel on disk; nothing else may pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/userlens demo --out runs/demo

# The demo's din behind the HTTP API on 127.0.0.1:8000 (README "Serving"); reuses a finished demo.
USERLENS_TOKEN ?= demo-token
DEMO_RUN := runs/demo/runs/din
DEMO_STORE := lmdb://runs/demo/store
serve: $(STAMP)
	test -f $(DEMO_RUN)/config.json -a -f runs/demo/data/meta.json || $(BIN)/userlens demo --out runs/demo
	$(BIN)/userlens export $(DEMO_RUN) --out runs/demo/package --force
	$(BIN)/userlens load-store runs/demo/data --store $(DEMO_STORE) --package runs/demo/package
	USERLENS_TOKEN='$(USERLENS_TOKEN)' $(BIN)/userlens serve runs/demo/package --store $(DEMO_STORE) \
		--host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs data
