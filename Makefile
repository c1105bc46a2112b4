# The front door. `make run` serves the API, `make test` runs lint and the whole suite.
# Both create .venv and install the locked dependencies on first use, and reuse them after.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
LOCK := backend/requirements/dev.lock
STAMP := $(VENV)/.installed

.PHONY: help install run test test-only test-image lint format migrate lock clean-data bench-rls bench-audit bench-vector bench-ingest bench-http bench-neighbours bench-edge bench-span bench-content bench-replicas bench-lifecycle fuzz

help:
	@echo "make run      start the database (embedded unless DATABASE_URL is set), migrate, serve on 127.0.0.1:8000 (PORT=8010 for another)"
	@echo "make test     lint + the whole test suite (embedded PostgreSQL unless TEST_DATABASE_URL is set)"
	@echo "make test-image  build the production image with podman; run the compose and Railway topologies"
	@echo "make lint     ruff check, ruff format --check, mypy (strict on app/)"
	@echo "make migrate  alembic upgrade head"
	@echo "make bench-vector  vector search strategies per tenant size (BENCH_ARGS='--docs 200000 --tenants 500')"
	@echo "make bench-ingest  ingestion docs/s (1 and 2 workers), upload->searchable, text vs raw search"
	@echo "make lock     re-resolve backend/requirements/*.lock from backend/pyproject.toml"
	@echo "make bench-rls  SQL-level cost of RLS on a cached 1M-document corpus (ARGS='--explain')"
	@echo "make bench-audit  audit inserts/s with and without the hash chain (prints a table)"
	@echo "make bench-http HTTP-level cost: the app under load, each route vs its no-auth baseline"
	@echo "make bench-edge  the edge's JSON nesting scan on pathological 1 MiB bodies vs a plain one"
	@echo "make bench-span  the request's server span per request, in process: ours vs FastAPI's own"
	@echo "make bench-content  document content MB/s encrypted vs plain (1 MB, 200 MB), peak RSS, KMS calls"
	@echo "make bench-lifecycle  export MB/s and time to offboard a tenant of 10,000 documents (ARGS='--docs 1000')"
	@echo "make bench-neighbours  tenant B's search latency while tenant A hammers search (~1 min)"
	@echo "make bench-replicas  read throughput and search p95 with 0 and 1 read replica, CPU per node (~3 min)"
	@echo "make fuzz     10,000-operation leak fuzz + schemathesis stateful run (ARGS='--seed 1 --ops 20000')"

# uv installs the lock in seconds and prints what it does. It is pinned in the lock and put into
# .venv by the host's pip the first time; .venv itself is made without pip (ensurepip alone
# takes longer than the whole install): use `.venv/bin/uv pip ...` in it. `uv pip sync` makes
# .venv exactly the lock (stale packages go), then the app is installed editable on top.
UV := $(BIN)/uv

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv --without-pip $(VENV); }
	@echo "bootstrapping uv into $(VENV) with pip"
	@$(PYTHON) -m pip --python $(BIN)/python install --disable-pip-version-check --progress-bar on \
		"$$(grep -m1 '^uv==' $(LOCK) || echo uv)"

$(STAMP): $(LOCK) backend/pyproject.toml | $(UV)
	@echo "installing $(LOCK) into $(VENV) with uv"
	$(UV) pip sync --python $(BIN)/python $(LOCK)
	$(UV) pip install --python $(BIN)/python --no-deps -e backend
	@touch $(STAMP)

install: $(STAMP)

# make run PORT=8010 (the command line's PORT, else the environment's, else 8000). `exec`, so
# a signal make passes on (an IDE's stop button) reaches the app, which stops its database.
run: install
	cd backend && exec $(BIN)/python -m app run $(if $(PORT),--port $(PORT))

migrate: install
	cd backend && $(BIN)/python -m app migrate

lint: install
	cd backend && $(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: install
	cd backend && $(BIN)/ruff check --fix . && $(BIN)/ruff format .

test: lint test-only

test-only: install
	cd backend && $(BIN)/python -m pytest

# The deploy path for real (issue 14): podman (installed with apt-get when run as root), a
# debootstrap base image kept once built, backend/Dockerfile, then docker-compose.yml's and
# railway.json's topologies. See backend/image_tests/.
test-image: install
	cd backend && $(BIN)/python -m pytest image_tests -p no:cacheprovider -s --durations=0

bench-audit: install
	cd backend && $(BIN)/python -m bench.audit_chain $(ARGS)
bench-edge: install
	cd backend && $(BIN)/python -m bench.edge_scan $(ARGS)
bench-content: install
	cd backend && $(BIN)/python -m bench.content $(ARGS)
bench-span: install
	cd backend && $(BIN)/python -m bench.request_span $(ARGS)

bench-lifecycle: install
	cd backend && $(BIN)/python -m bench.tenant_lifecycle $(ARGS)
bench-vector: install
	cd backend && $(BIN)/python bench/vector_search.py $(BENCH_ARGS)
# The ingestion pipeline: documents/s at worker concurrency 1 and 2, upload -> searchable,
# text search beside raw-embedding search per tenant class; e.g. ARGS="--docs 200".
bench-ingest: install
	cd backend && $(BIN)/python -m bench.ingest $(ARGS)

lock: | $(UV)
	cd backend && $(UV) pip compile --quiet pyproject.toml --extra embedded --extra dev \
		--excludes requirements/excludes.txt \
		--python-version 3.11 -o requirements/dev.lock
	cd backend && $(UV) pip compile --quiet pyproject.toml --generate-hashes \
		--excludes requirements/excludes.txt \
		--python-version 3.11 -o requirements/prod.lock
	cd backend && $(UV) pip compile --quiet requirements/selfhost.in --generate-hashes \
		-c requirements/dev.lock --python-version 3.11 -o requirements/selfhost.lock

# The corpus is built once (about a minute) into backend/bench/.cache/ and reused; pass flags
# through ARGS, e.g. make bench-rls ARGS="--explain --iterations 500".
bench-rls: install
	cd backend && $(BIN)/python -m bench.rls_cost $(ARGS)

# Starts the app (uvicorn, 2 workers) on a copy of a cached corpus and loads it from a separate
# process; e.g. make bench-http ARGS="--seconds 5 --rounds 3".
bench-http: install
	cd backend && $(BIN)/python -m bench.http_cost $(ARGS)
# The real app under uvicorn on a throw-away embedded database; flags through ARGS, e.g.
# make bench-neighbours ARGS="--seconds 15 --tenant-concurrency 2".
bench-neighbours: install
	cd backend && $(BIN)/python -m bench.noisy_neighbours $(ARGS)
# Its own primary and streaming replica; flags through ARGS, e.g.
# make bench-replicas ARGS="--tenants 8 --docs 8000 --seconds 15 --rounds 2 --concurrency 8".
bench-replicas: install
	cd backend && $(BIN)/python -m bench.read_replicas $(ARGS)
# Leak fuzz (10,000 operations, 20 tenants, concurrency 16 over a pool of 5) on a throw-away
# database, then schemathesis's stateful phase; flags through ARGS (--ops --seed --tenants
# --concurrency --pool --strict-search --schemathesis-examples).
fuzz: install
	cd backend && $(BIN)/python -m tests.fuzz $(ARGS)

clean-data:
	rm -rf backend/.data
