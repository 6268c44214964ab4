#!/usr/bin/env bash
# Re-pins requirements/{runtime,test,build,bulk,export,triton}.txt from pyproject.toml, each in a
# throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONPATH  # the Makefile exports the checkout; pip freeze must see only each venv
export LC_ALL=C   # one sort order on every machine
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
deps() {  # the dependency list of pyproject.toml, or of one optional group
  python3 - "$1" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
group = sys.argv[1]
print("\n".join(project["dependencies"] if group == "runtime" else project["optional-dependencies"][group]))
PY
}
freeze() { "$tmp/$1/bin/pip" freeze --exclude-editable | sort -f; }

python3 -m venv "$tmp/rt"
"$tmp/rt/bin/pip" install -q -r <(deps runtime)
freeze rt > "$tmp/runtime"
"$tmp/rt/bin/pip" install -q -r <(deps test)
freeze rt | grep -vxFf "$tmp/runtime" > "$tmp/test"

python3 -m venv "$tmp/bd"
"$tmp/bd/bin/pip" install -q -r requirements/runtime.txt -r <(deps build)
freeze bd | grep -vxFf "$tmp/runtime" > "$tmp/build"

python3 -m venv "$tmp/tr"
"$tmp/tr/bin/pip" install -q -r <(deps triton)
freeze tr > "$tmp/triton"

python3 -m venv "$tmp/bk"
"$tmp/bk/bin/pip" install -q -r requirements/runtime.txt -r <(deps bulk)
freeze bk | grep -vxFf "$tmp/runtime" > "$tmp/bulk"

python3 -m venv "$tmp/ex"
"$tmp/ex/bin/pip" install -q torch==2.13.0
"$tmp/ex/bin/pip" install -q -r <(deps export)
freeze ex | grep -v '^torch==' > "$tmp/export"

{ echo "# Runtime environment (.venv): exact versions. No torch here, ever."
  echo "# Regenerate with 'make lock' after changing dependencies in pyproject.toml."
  cat "$tmp/runtime"; } > requirements/runtime.txt
{ echo "# Test tools, installed on top of requirements/runtime.txt in .venv."
  cat "$tmp/test"; } > requirements/test.txt
{ echo "# Export environment (.venv-export): build time only. torch==2.13.0 (CPU) is installed"
  echo "# first, on its own, by the Makefile; every other version is pinned here."
  cat "$tmp/export"; } > requirements/export.txt
{ echo "# Build tools, installed on top of requirements/runtime.txt in .venv (never in the image): the"
  echo "# gRPC stubs' generator, scripts/grpc_stubs.py."
  cat "$tmp/build"; } > requirements/build.txt
{ echo "# The Triton client environment (.venv-triton): the tests of the Open Inference Protocol, run"
  echo "# with tritonclient as Triton's users run it. tritonclient[grpc] 2.73 needs protobuf < 7, the"
  echo "# server's grpcio-health-checking needs protobuf >= 7: two environments (docs/inference-protocol.md)."
  cat "$tmp/triton"; } > requirements/triton.txt
{ echo "# Bulk job environment (.venv-bulk): requirements/runtime.txt plus these, for"
  echo "# 'python -m app.bulk'. Never in the serving environment or the image."
  cat "$tmp/bulk"; } > requirements/bulk.txt
echo "pinned: $(grep -vc '^#' requirements/runtime.txt) runtime, $(grep -vc '^#' requirements/test.txt) test, $(grep -vc '^#' requirements/bulk.txt) bulk, $(grep -vc '^#' requirements/export.txt) export packages"
