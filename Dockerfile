# syntax=docker/dockerfile:1
# The keeper image: the `keepers` command, with the contracts' ABIs and bytecode in its package.
# Three stages so no compiler, npm or build tool reaches the final image.
# Reproducible: base images by digest (the tag beside each says what it is; move both together),
# npm packages from package-lock.json, Python packages from requirements/runtime.lock with every
# file's hash checked (./dev lock writes it; the tests run the same pins from dev.lock).

# 1. Contracts: forge + solcjs from npm compile contracts/ to ABIs and bytecode.
# Node 24 LTS, maintained until April 2028 (Node 20's support ended in April 2026).
FROM node:24.21.0-bookworm-slim@sha256:0e0ff40c39bc087845bfb27465a0df4ea419520094bc35842ff83dd8cbe6f9b6 AS contracts
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tools/ tools/
COPY contracts/ contracts/
WORKDIR /src/contracts
RUN ../node_modules/.bin/forge build

# 2. Python: the keepers distribution (what `pip install keepers` installs) and its dependencies
#    in a venv. Dependencies first, exactly as locked (nothing is resolved here); then the ABIs
#    and bytecode from stage 1 into the package, as `./dev build` puts them there; then the
#    project without dependencies, built by the locked setuptools; `pip check` proves the lock
#    covers it. Only the runtime: the development workshop (workshop/, keepers-workshop: devnet,
#    local relay, replay, test harness) and its dependencies never enter the image.
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3 AS python
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/keepers/venv
COPY requirements/runtime.lock /src/requirements/
RUN /opt/keepers/venv/bin/pip install --require-hashes --no-deps -r /src/requirements/runtime.lock
COPY pyproject.toml README.md /src/
COPY keepers/ /src/keepers/
COPY --from=contracts /src/contracts/out /src/contracts/out
WORKDIR /src
RUN /opt/keepers/venv/bin/python -m keepers.chain.artifacts /src/contracts/out \
    && /opt/keepers/venv/bin/pip install --no-deps --no-build-isolation /src \
    && /opt/keepers/venv/bin/pip check

# 3. Runtime: slim Python, non-root, nothing writable needed outside mounted volumes.
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3
COPY --from=python /opt/keepers/venv /opt/keepers/venv
ENV PATH=/opt/keepers/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["keepers"]
CMD ["--help"]
