# Two commands a new user needs (see README):  make course   and   make test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# Datasets are read from $MTL_DATA, else from the clone's own data/ (README, "Data"); never a folder beside it.

.PHONY: setup course lab test clean-venv

# Torch is pinned to the build this course is tested with; pip (not uv/poetry) installs it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,site]'
	touch $@

setup: $(VENV)/.installed

# The course's main job: execute every lesson (CPU profile), two at a time with one torch thread each
# (a 2-core machine's two cores), write HTML copies, then the website of the executed lessons (course-out/site).
course: setup
	$(PY) -m mtl course run --profile $${MTL_PROFILE:-cpu} --jobs 2 --out course-out
	$(PY) -m mtl course site --executed course-out --out course-out/site

# Open the lessons in JupyterLab.
lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# The whole test suite: lint (ruff), unit tests, strict nbval on every lesson, the browser widget test.
# Two pytest workers on two cores: one torch thread each (oversubscribed OpenMP threads crawl).
test: setup
	$(VENV)/bin/ruff check mtl tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadscope tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg

clean-venv:
	rm -rf $(VENV)
