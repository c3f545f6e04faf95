# brood — `make demo` runs the interactive spawn loop, `make test` runs every test.
CARGO ?= cargo
BROOD := target/release/brood

.PHONY: all build demo test lint check-child fmt clean fuzz

all: build

build:
	$(CARGO) build --release

# The textbook loop: Enter spawns child-scripts/hello with the next counter, q quits.
demo: build
	@echo "brood spawn: press Enter to spawn a child, l to list, h for help, q to quit"
	$(BROOD) spawn -- child-scripts/hello

# Every test, then one quick pass of the benchmark suite that proves it runs
# (it asserts no timing). The tools the tests use come first (test-deps).
test: test-deps
	$(CARGO) test --all-targets
	$(MAKE) --no-print-directory bench-check

# What the tests and the benchmark check run besides cargo: python3 with
# PyYAML (the Kubernetes manifests are parsed back), systemd-analyze (the
# units are verified), systemd-notify (a real sd_notify client), a C compiler (benchmark references), and util-linux's
# setpriv, prlimit, setsid and unshare (unprivileged and namespace tests).
# Idempotent: checks each, installs only what is missing (apt-get, as root),
# and otherwise names what to install and fails. Tests never install.
TEST_DEPS := python3:python3 systemd-analyze:systemd systemd-notify:systemd cc:gcc setpriv:util-linux \
	prlimit:util-linux setsid:util-linux unshare:util-linux
.PHONY: test-deps
test-deps:
	@missing=""; \
	for dep in $(TEST_DEPS); do \
		command -v $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	python3 -c 'import yaml' >/dev/null 2>&1 || missing="$$missing python3-yaml"; \
	[ -z "$$missing" ] && exit 0; \
	missing=$$(printf '%s\n' $$missing | sort -u | tr '\n' ' '); \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "make test-deps: missing $$missing- install these packages (Debian names) and run make test again"; \
		exit 1; \
	fi; \
	echo "make test-deps: apt-get install $$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $$missing >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; } \
		|| { echo "make test-deps: apt-get install $$missing failed"; exit 1; }

# The fault-injection stress tests (tests/stress.rs, ~10 s each); `make test` skips them.
.PHONY: test-stress
test-stress:
	$(CARGO) test --release --test stress -- --ignored

lint: check-child
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# The code between fork and exec may only make raw syscalls: no allocation,
# no formatting, no printing, no unwrap. The crate lints deny the last ones;
# this catches the allocating kinds the lints cannot see.
check-child:
	@! grep -nE 'format!|println!|eprintln!|print!|String|Vec<|vec!|Box<|to_string|\.unwrap\(|\.expect\(|panic!|log::' src/spawn/child.rs \
		|| (echo "src/spawn/child.rs: forbidden call between fork and exec (see its module doc)"; exit 1)

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean

# --- benchmarks (benches/README.md) -----------------------------------------
# The C reference programs are built here, with the machine's C compiler, into
# target/bench/bin; benches/run.py runs brood against them and the peers and
# writes a table to stdout, TSV and JSON to target/bench/.
#   make bench        full sizes, installs the peers it can (apt-get, pip)
#   make bench-quick  small sizes, under a minute
#   make bench-check  quick sizes, one round: proves every benchmark runs
BENCH_CC ?= $(if $(shell command -v gcc 2>/dev/null),gcc,cc)
BENCH_BIN := target/bench/bin
BENCH_REFS := forkloop prefixer linegen concloop reaploop exitstamp crashstamp
BENCH_PY ?= python3
define bench_refs
	@mkdir -p $(BENCH_BIN)
	@for p in $(BENCH_REFS); do \
		[ $(BENCH_BIN)/$$p -nt benches/ref/$$p.c ] && [ $(BENCH_BIN)/$$p -nt benches/ref/common.h ] || \
		$(BENCH_CC) -O2 -Wall -Wextra -o $(BENCH_BIN)/$$p benches/ref/$$p.c || exit 1; \
	done
	@for p in pausechild nop; do \
		[ $(BENCH_BIN)/$$p -nt benches/ref/$$p.c ] || \
		$(BENCH_CC) -O2 -Wall -static -o $(BENCH_BIN)/$$p benches/ref/$$p.c 2>/dev/null || \
		$(BENCH_CC) -O2 -Wall -o $(BENCH_BIN)/$$p benches/ref/$$p.c || exit 1; \
	done
endef

.PHONY: bench bench-quick bench-check

bench: build
	$(bench_refs)
	$(BENCH_PY) benches/run.py --mode full

bench-quick: build
	$(bench_refs)
	$(BENCH_PY) benches/run.py --mode quick

bench-check: build
	$(bench_refs)
	$(BENCH_PY) benches/run.py --check

# --- fuzzing (fuzz/README.md) ---------------------------------------------
# cargo-fuzz (libFuzzer) when a nightly toolchain is there, else the stable
# mutation fuzzer of tests/fuzz_stable.rs; FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := procfile toml_config dotenv console
fuzz:
	@if $(CARGO) +nightly --version >/dev/null 2>&1; then \
		$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz || exit 1; \
		cd fuzz && for t in $(FUZZ_TARGETS); do \
			mkdir -p corpus/$$t; \
			$(CARGO) +nightly fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
		done; \
	else \
		echo "no nightly toolchain: running the stable mutation fuzzer"; \
		FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --release --test fuzz_stable -- --nocapture; \
	fi
