# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both create .venv with pip when it is missing; torch is pinned to the local CPU build.
PY      := .venv/bin/python
VENV_OK := .venv/.installed
TORCH   := torch==2.13.0

.PHONY: run test lint bench sanctum clean

$(VENV_OK): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,compat]' $(TORCH)
	touch $(VENV_OK)

run: $(VENV_OK)
	.venv/bin/esper ppo --episodes 10

test: $(VENV_OK)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m mypy
	.venv/bin/lint-imports
	$(PY) -m pytest -q -n 2

sanctum: $(VENV_OK)
	.venv/bin/sanctum

bench: $(VENV_OK)
	$(PY) -m pip install --quiet -e '.[test,bench]' $(TORCH)
	$(PY) -m benchmarks

clean:
	rm -rf .venv .pytest_cache .ruff_cache .hypothesis
