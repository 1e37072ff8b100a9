# r3map — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := build
NODE_MODULES_STAMP := node_modules/.package-lock.json

.PHONY: build deps deps-test demo test test-unit test-conformance test-kernel bench lint clean

$(NODE_MODULES_STAMP): package.json package-lock.json
	bash scripts/install-npm.sh

deps: $(NODE_MODULES_STAMP)

# Outside NBD clients and servers used as referees (apt); idempotent.
deps-test: deps
	bash scripts/install-test-tools.sh

build: deps
	npx tsc -p tsconfig.json

demo: deps-test build
	bash scripts/demo.sh

# Every test this machine can run: unit, conformance (real NBD clients), then the kernel suite
# (here, or in a VM when this kernel has no nbd); ends with one summary line for both.
test: deps-test build
	bash scripts/test-all.sh

test-unit: build
	bash scripts/run-tests.sh unit

test-conformance: deps-test build
	bash scripts/run-tests.sh conformance

# The kernel suite alone (the VM uses this machine's tools, hence deps-test).
test-kernel: deps-test build
	bash scripts/run-kernel-tests.sh

bench: deps-test build
	bash scripts/bench.sh

lint: deps
	npx tsc -p tsconfig.json --noEmit
	npx eslint src test

clean:
	rm -rf dist
