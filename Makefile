# ringblk — see README.md. `make` alone lists the targets.
GO        ?= go
PKGS      ?= ./...
PKG       ?= ./...
FUZZTIME  ?= 30s
TESTFUZZTIME ?= 300x
STRESSTIME ?= 5m
BIN       := bin

.PHONY: help build build-rbd rbdtest rbdbench run test race stress fuzz lint vet fmtcheck bench ringbench devbench rawbench qcow2bench hostbench fio-examples iotests plugin deps clean

help:
	@echo "ringblk make targets:"
	@echo "  make run        the main job: a benchmark on a default image in a temporary directory"
	@echo "  make test       installs test tools if missing, then vet, format check, unit tests (-tags invariants), -race tests, allocation budgets and a short run of every fuzz target (TESTFUZZTIME executions each)"
	@echo "  make build      builds bin/ringblk"
	@echo "  make build-rbd  builds bin/ringblk with Ceph RBD support (-tags rbd; needs librbd-dev)"
	@echo "  make rbdtest    the RBD tests against a one-node Ceph cluster it starts and stops (scripts/rbd-test.sh; part of make test)"
	@echo "  make rbdbench   ringblk bench against fio's rbd engine and qemu-img bench on one RBD image (scripts/rbd-vs-fio.sh)"
	@echo "  make race       go test -race on all packages"
	@echo "  make stress     long randomized stress tests (PKG=./block STRESSTIME=5m)"
	@echo "  make fuzz       runs every fuzz target for FUZZTIME each (FUZZ=Name to pick one)"
	@echo "  make lint       vet, gofmt and the import-policy test"
	@echo "  make bench      Go benchmarks of the hot paths (-benchmem)"
	@echo "  make ringbench  our ring against fio's io_uring engine, side by side (scripts/ringbench-vs-fio.sh)"
	@echo "  make devbench   O_DIRECT on zram and a loop device over tmpfs (made and removed here; root): ringblk, the bare ring, fio, qcow2 vs raw and qemu-img bench (scripts/device-bench.sh)"
	@echo "  make rawbench   the raw driver through the block layer against fio and qemu-img bench (scripts/raw-vs-fio.sh)"
	@echo "  make qcow2bench the qcow2 driver against the raw driver and qemu-img bench (scripts/qcow2-vs-qemu.sh)"
	@echo "  make hostbench  the host API from a host goroutine against ringblk bench (scripts/host-vs-bench.sh)"
	@echo "  make fio-examples  fio's example jobs with io_uring (fio) and ringblk (bench): fails on a refusal or a JSON key set unlike fio's (scripts/fio-examples.sh)"
	@echo "  make iotests    QEMU 7.2's qemu-iotests (qemu-img/qemu-io bash tests, -qcow2 and -raw) with ringblk as qemu-img/qemu-io, and with QEMU's own tools as the baseline; fetches the tests once (scripts/iotests.sh; slow, not in make test)"
	@echo "  make plugin     builds the Go plugin (bin/ringblk.so); hosts in their own module: docs/plugin.md"

# The commit is stamped at link time: GOFLAGS may carry -buildvcs=false.
COMMIT    := $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)

build:
	$(GO) build -ldflags "-X main.commit=$(COMMIT)" -o $(BIN)/ringblk ./cmd/ringblk

build-rbd:
	$(GO) build -tags rbd -ldflags "-X main.commit=$(COMMIT)" -o $(BIN)/ringblk ./cmd/ringblk

rbdtest:
	GO=$(GO) ./scripts/rbd-test.sh

rbdbench:
	./scripts/rbd-vs-fio.sh

iotests:
	@./scripts/iotests.sh $(IOTESTS_ARGS)

run: build
	@./scripts/run.sh $(BIN)/ringblk

deps:
	@./scripts/deps.sh

fmtcheck:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

lint: vet fmtcheck
	$(GO) test -count=1 ./internal/lint/

# Three passes: everything with assertions on (-tags invariants); everything
# under the race detector; and the allocation budgets (tests named *Alloc*),
# which hold only in a production build, so the first two passes skip them.
test: deps fmtcheck vet
	$(GO) test -tags invariants -count=1 -timeout 20m $(PKGS)
	$(GO) test -race -short -count=1 -timeout 20m $(PKGS)
	$(GO) test -count=1 -timeout 10m -run Alloc $(PKGS)
	FUZZMINTIME=1s ./scripts/fuzz.sh "" $(TESTFUZZTIME)
	GO=$(GO) ./scripts/rbd-test.sh

race:
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

stress:
	RINGBLK_STRESS=1 RINGBLK_STRESSTIME=$(STRESSTIME) $(GO) test -tags invariants -race -count=1 -timeout 0 -run 'Stress' $(PKG)

fuzz:
	@./scripts/fuzz.sh "$(FUZZ)" "$(FUZZTIME)"

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 $(PKGS)

ringbench: build
	./scripts/ringbench-vs-fio.sh

rawbench:
	./scripts/raw-vs-fio.sh

devbench: build
	./scripts/device-bench.sh -b $(BIN)/ringblk -Q

fio-examples: build
	@./scripts/fio-examples.sh $(BIN)/ringblk

qcow2bench:
	./scripts/qcow2-vs-qemu.sh

hostbench:
	./scripts/host-vs-bench.sh

plugin:
	$(GO) build -buildmode=plugin -o $(BIN)/ringblk.so ./plugin

clean:
	rm -rf $(BIN)
