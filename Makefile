# flechefs — the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
MOUNTPOINT ?= $(HOME)/flechefs
PREFIX ?= /usr/local
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GOFLAGS_BUILD := -trimpath -ldflags "-X main.version=$(VERSION)"

.PHONY: build install run test test-quick bench fuzz clean

build:
	go build $(GOFLAGS_BUILD) -o bin/flechefs ./cmd/flechefs

## install: build, then copy the binary to $(PREFIX)/bin (so `flechefs` is on PATH).
install: build
	install -D -m 0755 bin/flechefs $(DESTDIR)$(PREFIX)/bin/flechefs

## run: install, then mount the embedded default (RAM 256 MiB over bbolt 10 GiB) at $(MOUNTPOINT), in the foreground.
run:
	scripts/deps.sh run
	$(MAKE) install
	mkdir -p $(MOUNTPOINT)
	$(PREFIX)/bin/flechefs mount $(MOUNTPOINT)

## test: every test, under the race detector, on real FUSE mounts and a real sshd.
test:
	scripts/deps.sh test
	go vet ./...
	go test -race -count=1 -timeout 60m ./...

## test-quick: the same without the long fault suites.
test-quick:
	go test -race -count=1 -short ./...

bench:
	scripts/deps.sh bench
	bench/run.sh

fuzz:
	go test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./digest

clean:
	rm -rf bin
