# SPDX-License-Identifier: GPL-2.0
#
# KFlex: the two commands are `make demo` and `make test` (see README.md).
#
#   make setup   install what is missing (Debian packages, bindgen-cli)
#   make kernel  build both guest kernels (CONFIG_KFLEX=y and =m) in ~/.cache/kflex
#   make tools   bpftool, vmlinux.h, kflex-load and the guest test binary
#   make demo    all of the above, then the demo in a guest
#   make test    all of the above, then host tests and guest tests
#   make vm CMD='...'   run CMD as root in a guest (no CMD: interactive shell)
#   make bench   kflex-bench in a guest: table and JSON in bench/results/
#
# Not part of `make test` (long; see README.md "Other targets"):
#   make kernel-st kernel-base kernel-debug   the selftests kernel, its unpatched
#                twin, the debug kernel (linux/build.sh st|base|debug)
#   make selftests   the kernel's BPF selftests on st and base, compared
#   make test-verifier   test_verifier on the y kernel vs the known failures
#   make test-debug      the guest test suite on the debug kernel
#                        (also: make test VARIANT=debug)

SHELL := /bin/bash
KFLEX_CACHE ?= $(HOME)/.cache/kflex
export KFLEX_CACHE
export CARGO_TARGET_DIR ?= $(KFLEX_CACHE)/target
export KFLEX_VMLINUX_DIR := $(KFLEX_CACHE)/include
export LIBCLANG_PATH ?= /usr/lib/llvm-19/lib
VARIANT ?= y

.PHONY: all setup kernel kernel-y kernel-m kernel-st kernel-base kernel-debug tools demo test vm bench bench-offloads bench-redis bench-zadd bench-alloc check \
	selftests test-verifier test-debug clean-cache

all: tools

setup:
	@linux/setup.sh

kernel: setup
	@linux/build.sh y
	@linux/build.sh m

kernel-y kernel-m kernel-st kernel-base kernel-debug: setup
	@linux/build.sh $(@:kernel-%=%)

tools: kernel
	@linux/tools.sh

demo: tools
	@tests/vm.sh --variant y --timeout 900 -- bash $(CURDIR)/tests/demo.sh

ifeq ($(VARIANT),debug)
test: test-debug
else
test: tools
	@tests/run-all.sh
endif

# The kernel's BPF selftests on our kernel and on the unpatched one;
# report in tests/results/selftests.md.
selftests: setup kernel-st kernel-base
	@tests/selftests/run.sh

test-verifier: tools
	@tests/selftests/verifier-ci.sh y

test-debug: tools kernel-debug
	@tests/debug.sh

vm: tools
	@tests/vm.sh --variant $(VARIANT) --timeout $(or $(TIMEOUT),3600) $(if $(CMD),-- bash -c '$(CMD)')

# Every benchmark in one guest run (BENCH_ARGS are passed to kflex-bench,
# e.g. BENCH_ARGS='--filter ds/ --ops 20000'). Progress goes to the console;
# the table (with the guard table) and the JSON land in bench/results/.
BENCH_RUN := bench/results/run.tmp
bench: tools
	@mkdir -p bench/results
	@rm -rf $(BENCH_RUN)
	@tests/vm.sh --variant y --timeout $(or $(TIMEOUT),7200) --dir $(CURDIR)/$(BENCH_RUN) -- \
		bash -c 'kflex-bench $(BENCH_ARGS) --json-file /run/kflex/kflex-bench.json >/run/kflex/kflex-bench.txt'
	@cp $(BENCH_RUN)/kflex-bench.txt $(BENCH_RUN)/kflex-bench.json bench/results/
	@cat bench/results/kflex-bench.txt
	@echo "written: bench/results/kflex-bench.txt bench/results/kflex-bench.json"

# An offload benchmark: tests/bench-$(1).sh in one y guest run; the table and
# every raw output land in bench/results/$(1)/ (through $(1).tmp).
define offload_bench
	@rm -rf bench/results/$(1).tmp bench/results/$(1)
	@tests/vm.sh --variant y --timeout $(or $(TIMEOUT),7200) --dir $(CURDIR)/bench/results/$(1).tmp -- \
		bash $(CURDIR)/tests/bench-$(1).sh /run/kflex/$(1)
	@mkdir -p bench/results && cp -r bench/results/$(1).tmp/$(1) bench/results/$(1) && rm -rf bench/results/$(1).tmp
	@echo "written: bench/results/$(1)/table.txt"
endef

# The memcached offload against memcached alone (memaslap, both variants
# alternating, 3 rounds of 20 s each per workload).
bench-offloads: tools
	$(call offload_bench,offloads)

# The Redis GET/SET offload against redis-server alone (redis-benchmark, both
# variants alternating, 3 rounds).
bench-redis: tools
	$(call offload_bench,redis)

# The Redis sorted-set offload against redis-server alone (redis-benchmark -t
# zadd on a 100,000-member set, both variants alternating, 3 rounds).
bench-zadd: tools
	$(call offload_bench,zadd)

# The allocator against the BPF allocators, bpf_obj_new and kmalloc (cost
# breakdown included), and the list/rbtree/skiplist rows with the native
# structures on kernel memory: tables in bench/results/alloc/.
bench-alloc: tools
	$(call offload_bench,alloc)

# Formatting and lints of the userspace crates.
check:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
