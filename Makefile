# The README's commands. Each target installs what it needs first, so a fresh clone needs nothing
# else: `make serve` starts the gateway, `make test` runs the whole test suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check -q
TS := clients/typescript
WEB := examples/nextjs

.PHONY: install serve test test-rust test-python test-typescript test-web lint

# Builds the native extension (release profile, via maturin) and installs the gateway with its
# development tools, the Python client (home of the generated gRPC code), and the TypeScript
# client's and the Next.js example's npm packages; builds the S3 server the blob tests run against
# (s3s-fs from crates.io, once, into ~/.cache/viewbait-tools; see tests/s3s_fs.py) and, when
# missing, Debian's prometheus package (the server and promtool the metrics tests run) and
# chromium (the browser the example's test drives).
install: $(TS)/node_modules/.package-lock.json $(WEB)/node_modules/.package-lock.json \
		/usr/bin/promtool /usr/bin/chromium
	$(PIP) install -e clients/python -e '.[dev]'
	$(PYTHON) tests/s3s_fs.py --build

/usr/bin/promtool:
	DEBIAN_FRONTEND=noninteractive apt-get -qq update
	DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends prometheus \
		>/dev/null

/usr/bin/chromium:
	DEBIAN_FRONTEND=noninteractive apt-get -qq update
	DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends chromium \
		>/dev/null

$(TS)/node_modules/.package-lock.json: $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund --loglevel=error

# The example depends on the client (file:../../clients/typescript): its packages come first.
$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json $(TS)/node_modules/.package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error

serve: install
	$(PYTHON) -m gateway serve

test: install test-rust test-python test-typescript test-web

test-rust:
	cargo test --quiet -p viewbait-native

test-python:
	$(PYTHON) -m pytest

test-typescript:
	cd $(TS) && npm test

# The Next.js example end to end in Chromium: builds the client and the app (`next build`), then
# examples/nextjs/test/browser.test.mjs; screenshots in examples/nextjs/test-output/.
test-web:
	cd $(TS) && npm run build
	cd $(WEB) && NEXT_TELEMETRY_DISABLED=1 PYTHON=$(PYTHON) npm run test:browser

# Static checks CI runs after `make test` (the extension is built by then).
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy.stubtest gateway._native
	cargo clippy --quiet --all-targets -- -D warnings
	$(PYTHON) proto/codegen.py --check
