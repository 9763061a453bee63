# crl — build, test, bench, demo.
#
#   make            build the library, the binaries and the tests into $(B)/
#   make test       install missing Debian packages, build, run every test
#   make asan       the same tests under AddressSanitizer + UBSan (build-asan/)
#   make bench      speed figures beside their references (installs python3-torch)
#   make chaos      long chaos run: actors, broker and learner killed under a live run
#   make fuzz       fuzz every parser for FUZZ_SECONDS (300) each (tests/fuzz/run.sh)
#   make demo       the whole recipe on the built-in world (launch/demo.sh)
#   make deps       install the Debian packages crl needs (launch/install-deps.sh)
#   make clean      remove build folders
#
# B selects the build folder, so that several builds (or people) can work
# in one tree at once:  make B=/tmp/mybuild test

# The program rules below are generated before `all`, so name the default.
.DEFAULT_GOAL := all

B ?= build
CC ?= cc
OPT ?= -O2 -march=native
SAN ?=
PKGS := openblas libzmq libprotobuf-c hwloc libcjson stb
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -pthread $(OPT) $(SAN) \
          -I. -Icommon -I$(B) $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := -pthread $(SAN) $(EXTRA_LDFLAGS)
LDLIBS := $(PKG_LIBS) -lm

COMMON_SRCS ?= $(wildcard common/*.c)
PROTO_C := $(B)/proto/crl.pb-c.c
LIB_OBJS := $(COMMON_SRCS:%.c=$(B)/%.o) $(PROTO_C:.c=.o)
LIB := $(B)/libcrl.a

# Every file DIR/crl_NAME.c holds a main() and becomes $(B)/bin/crl-NAME;
# the other .c files of DIR are linked into each program of DIR.
PROG_DIRS := actor learner broker
define prog_rules
$(1)_MAINS := $$(wildcard $(1)/crl_*.c)
$(1)_SHARED := $$(filter-out $(1)/crl_%.c,$$(wildcard $(1)/*.c))
$(1)_PROGS := $$(patsubst $(1)/crl_%.c,$(B)/bin/crl-%,$$($(1)_MAINS))
$$($(1)_PROGS): $(B)/bin/crl-%: $(B)/$(1)/crl_%.o $$($(1)_SHARED:%.c=$(B)/%.o) $(LIB)
	@mkdir -p $$(@D)
	@echo "  LD      $$@"
	$$(Q)$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
PROGS += $$($(1)_PROGS)
endef
$(foreach d,$(PROG_DIRS),$(eval $(call prog_rules,$(d))))

TEST_SRCS ?= $(wildcard tests/test_*.c)
TEST_BIN := $(B)/tests/crl-tests
BENCH_BIN := $(B)/bin/crl-bench

.PHONY: all deps test run-tests asan bench demo clean help fuzz chaos
FUZZ_SECONDS ?= 300
FUZZ_SHORT ?= 5
all: $(LIB) $(PROGS) $(TEST_BIN)

help:
	@sed -n '2,15p' Makefile

deps:
	@bash launch/install-deps.sh

# One protoc-c run makes both files (grouped target: never run twice under -j).
$(B)/proto/crl.pb-c.c $(B)/proto/crl.pb-c.h &: proto/crl.proto
	@mkdir -p $(B)/proto
	protoc-c --c_out=$(B) proto/crl.proto

# V=1 shows full command lines.
Q := $(if $(filter 1,$(V)),,@)

$(B)/%.o: %.c $(B)/proto/crl.pb-c.h
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(B)/proto/crl.pb-c.o: $(B)/proto/crl.pb-c.c
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJS)
	@rm -f $@
	@echo "  AR      $@"
	$(Q)ar rcs $@ $^

# The tests also link the programs' shared (non-main) files, so that the
# learner's and actor's internals are testable without a process.
PROG_SHARED_OBJS := $(foreach d,$(PROG_DIRS),$($(d)_SHARED:%.c=$(B)/%.o))
$(TEST_BIN): $(TEST_SRCS:%.c=$(B)/%.o) $(PROG_SHARED_OBJS) $(LIB)
	@mkdir -p $(@D)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

$(BENCH_BIN): $(patsubst %.c,$(B)/%.o,$(wildcard tests/bench/*.c)) $(LIB)
	@mkdir -p $(@D)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# `make test` first installs what is missing, then re-reads this Makefile
# (pkg-config flags are only known once the packages are there).
test: deps
	@$(MAKE) --no-print-directory run-tests

# The short fuzz run comes first so that Criterion's summary is the last line.
run-tests: all
	@FUZZ_BUILD=$(B)/fuzz FUZZ_SEED=1 bash tests/fuzz/run.sh $(FUZZ_SHORT)
	@CRL_BIN_DIR=$(abspath $(B)/bin) bash tests/run.sh $(TEST_BIN)

fuzz: deps
	@FUZZ_BUILD=$(B)/fuzz bash tests/fuzz/run.sh $(FUZZ_SECONDS)

chaos: all
	@CRL_BIN_DIR=$(abspath $(B)/bin) bash tests/chaos/chaos.sh $(TEST_BIN)

asan: deps
	@LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp) \
	    $(MAKE) --no-print-directory B=build-asan FUZZ_SHORT=0 OPT="-O1 -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" run-tests

bench: 
	@CRL_WITH_TORCH=1 bash launch/install-deps.sh
	@$(MAKE) --no-print-directory $(BENCH_BIN) $(PROGS)
	@bash tests/bench/run.sh $(BENCH_BIN)

# The whole recipe on the built-in world (launch/demo.sh says what it does
# and how long it takes). DEMO_ARGS="--set rl.steps=50" passes overrides.
demo: deps
	@$(MAKE) --no-print-directory all
	@CRL_BIN_DIR=$(abspath $(B)/bin) bash launch/demo.sh $(DEMO_ARGS)

clean:
	rm -rf build build-asan

-include $(shell find $(B) -name '*.d' 2>/dev/null)
