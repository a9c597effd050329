# The two commands of the README:
#   make demo   - the main job on the default model
#   make test   - the test suite
VENVS ?= .venvs
SERVE := $(VENVS)/serve/bin
COMPRESS := $(VENVS)/compress/bin
export SPARSEGATE_VENVS := $(abspath $(VENVS))

.PHONY: setup demo test lint clean-envs

setup: $(VENVS)/serve/.ready $(VENVS)/compress/.ready

# Stamps make set-up idempotent: an environment is rebuilt only when the
# package's requirements or the set-up script change.
$(VENVS)/%/.ready: pyproject.toml scripts/setup-env.sh
	scripts/setup-env.sh $*
	@touch $@

demo: setup
	$(SERVE)/sparsegate models import gemma-3-270m --exist-ok
	@$(SERVE)/sparsegate models show gemma-3-270m-wanda2of4-w8a8 >/dev/null 2>&1 || \
	  $(SERVE)/sparsegate compress gemma-3-270m --prune wanda --pattern 2:4 --quant w8a8
	$(SERVE)/sparsegate models list

test: setup
	$(SERVE)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(SERVE)/ruff check app tests
	$(SERVE)/ruff format --check app tests

clean-envs:
	rm -rf $(VENVS)
