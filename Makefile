# Two commands for a fresh machine (see README):
#   make run    create .venv, install, run the CPU preset end to end (snakemake -c all all)
#   make test   create .venv, install, run the test suite
# Others: make slurm-test (local single-node SLURM cluster, needs root + apt), make bench, make dry-paper,
#   make disk-plan [CONFIG=config/paper.yaml] (planned disk use of a config's artifacts)

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test slurm-test bench dry-paper disk-plan clean-results

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -c all all

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

slurm-test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash .ci/slurm-test.sh

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/em_scaling.py
	@if [ -f results/manifold/diem_tweedie/iter_003/posterior.h5 ]; then \
		$(BIN)/python benchmarks/denormals.py results --experiment manifold; \
	else echo "benchmarks/denormals.py skipped: needs a finished run (make run)"; fi

dry-paper: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile slurm -n all

disk-plan: $(STAMP)
	$(BIN)/python -m emprior disk-plan --config $(or $(CONFIG),config/paper.yaml)

clean-results:
	rm -rf results/*/ results/.config
