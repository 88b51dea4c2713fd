# The two commands a user needs: `make run` (demo on the embedded store) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests and benchmarks use: tshark is the reference dissector, python3-dpkt ships
# real example captures, the others play real servers and clients in network namespaces (redis-server,
# postgresql and their benchmark clients feed the dissection benchmarks); chromium drives the page's tests.
APT_PKGS := tshark tcpdump python3-dpkt dnsmasq nginx-light iproute2 curl python3-bpfcc etcd-server golang-go rsync dpkg-dev openssl iperf3 bind9-dnsutils redis-server redis-tools postgresql chromium fonts-dejavu-core nftables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt testenv run test bench lint clean fuzz crash soak

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@python3 -m venv --help >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The agent's test environment, cached under /var/cache/netrecall: kernel headers for bcc (and Debian's
# bcc linked into the venv), and a kube-apiserver built once from Debian's source package.
testenv: setup apt
	@bash tests/setup/bcc_headers.sh $(VENV) >/dev/null
	@bash tests/setup/kube_apiserver.sh

run: setup
	$(VENV)/bin/netrecall demo --serve

test: setup apt testenv
	$(VENV)/bin/ruff check netrecall tests bench
	$(PY) -m pytest -q

bench: setup apt testenv
	$(PY) -m bench

# Reliability (docs/reliability.md). `make fuzz`: every atheris target for FUZZ_RUNS executions (at most
# FUZZ_SECONDS each); `make crash`: kill -9 of each command CRASH_RUNS times; `make soak`: agents on two
# namespace nodes into a hub for SOAK_SECONDS with restarts, network cuts and retention.
FUZZ_RUNS ?= 1000000
FUZZ_SECONDS ?= 7200
FUZZ_JOBS ?= 1
CRASH_RUNS ?= 50
SOAK_SECONDS ?= 600

fuzz: setup apt
	$(PY) -m tests.fuzz.run --runs $(FUZZ_RUNS) --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS)

crash: setup apt
	NETRECALL_CRASH_RUNS=$(CRASH_RUNS) $(PY) -m pytest -q -s tests/test_crash.py tests/test_crash_diskfull.py

soak: setup apt testenv
	NETRECALL_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s tests/test_soak.py

lint: setup
	$(VENV)/bin/ruff check netrecall tests bench
	$(VENV)/bin/ruff format --check netrecall tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/out
