# prescreen — make run | make test | make bench
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true

.PHONY: run test lint layers typecheck pytest bench mutate clean i18n

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/prescreen serve

lint: $(STAMP)
	$(BIN)/ruff check prescreen tests benchmarks

layers: $(STAMP)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy --strict prescreen

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 -n 2 --dist loadfile

test: lint layers typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_models.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_quantization.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_ecg.py --out BENCHMARKS.md --run runs/ecg-ship
	$(BIN)/python benchmarks/bench_imaging.py --out BENCHMARKS.md --runs runs/cxr-ship runs/bus-ship
	$(BIN)/python benchmarks/bench_ingest.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_cstore.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_worklist.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_memory.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_protect.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_failover.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_replicas.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/bench_holter.py --out BENCHMARKS.md

# the pages' message catalogues: extract every marked string (babel.cfg) and merge it into each .po;
# then translate the new, empty msgstr entries (tests/serving/test_i18n.py fails until they are)
LOCALES := prescreen/serving/locale
i18n: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ --project prescreen --version 0.1.0 --copyright-holder "the prescreen authors" --no-wrap --sort-by-file --add-location=file \
		-o $(LOCALES)/messages.pot .
	$(BIN)/pybabel update -i $(LOCALES)/messages.pot -d $(LOCALES) -D messages --no-wrap --ignore-obsolete

mutate: $(STAMP)
	$(BIN)/mutmut run || true  # surviving mutants are a score, not a failure
	$(BIN)/mutmut export-cicd-stats
	cat mutants/mutmut-cicd-stats.json
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache mutants
