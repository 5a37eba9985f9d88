# Glasswing: `make demo` and `make test` set up a fresh Debian 12 machine (as root) and run.
VENV   ?= $(CURDIR)/.venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
export PATH := $(VENV)/bin:$(PATH)

.PHONY: all install build demo test test-unit test-bpf test-integration clean

all: build

install:
	bash scripts/install.sh $(VENV)

PROTOS := $(wildcard dataplane/proto/*.proto)
PB2    := $(PROTOS:.proto=_pb2.py)
PYX    := $(wildcard ext/*.pyx)

build: install $(PB2) $(VENV)/bin/glasswing .build-ext build/loadgen

dataplane/proto/%_pb2.py: dataplane/proto/%.proto
	$(PY) -m grpc_tools.protoc -I dataplane/proto --python_out=dataplane/proto $<

$(VENV)/bin/glasswing: setup.py
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
	  | grep -v -e '^ *$$' -e 'Editable installation' -e '\*\*\*' -e '!!' -e 'working directory' -e 'may take precedence' -e 'wheel_obj' || true
	test -x $@

# the open-loop HTTP load generator of `glasswing bench http` (C: its own overhead stays
# far below the latencies it measures)
build/loadgen: ext/loadgen/loadgen.c
	mkdir -p build
	gcc -O2 -Wall -Wextra -o $@ $<

.build-ext: $(PYX) $(wildcard ext/*.pxd ext/relay/*) bpf/kernel_relay.h setup.py
	$(PY) setup.py -q build_ext --inplace
	touch $@

demo: build
	$(VENV)/bin/glasswing demo

# Every tier runs even if an earlier one failed; the target fails if any did.
# GLASSWING_REQUIRE_ALL=1 turns a skip into a failure (tests/conftest.py).
test: build
	@rc=0; \
	for tier in unit bpf integration; do \
	  echo "== $$tier tests"; \
	  $(PYTEST) -q -rs tests/$$tier || rc=1; \
	done; exit $$rc

test-unit test-bpf test-integration: build
	$(PYTEST) -q -rs tests/$(subst test-,,$@)

clean:
	rm -rf build *.egg-info .build-ext dataplane/relay/*.so dataplane/proto/*_pb2.py ext/*.c

# --- Test VM (Vagrant + libvirt; README "Test VM (Vagrant)") -----------------------------
# vm-box: a local Debian 12 libvirt box built from Debian's archive, for offline provisioning
#         (output under /var/tmp/glasswing-vm; VM_BOX_FLAGS=--force rebuilds it anyway).
# test-vm: vagrant up with that box, then doctor, the demo and the bpf tier in the VM;
#          results in results/vm/; the VM and what libvirt made for it are always removed.
.PHONY: vm-box test-vm
vm-box:
	bash scripts/vm-box.sh $(VM_BOX_FLAGS)

test-vm:
	bash scripts/vm-test.sh
