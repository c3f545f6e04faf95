# brood — `make demo` runs the interactive spawn loop, `make test` runs every test.
CARGO ?= cargo
BROOD := target/release/brood

.PHONY: all build demo test unit integration lint check-child fmt clean

all: build

build:
	$(CARGO) build --release

# The textbook loop: Enter spawns child-scripts/hello with the next counter, q quits.
demo: build
	@echo "brood spawn: press Enter to spawn a child, l to list, h for help, q to quit"
	$(BROOD) spawn -- child-scripts/hello

test:
	$(CARGO) test --all-targets

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
