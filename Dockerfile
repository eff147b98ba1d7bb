# syntax=docker/dockerfile:1
# The keeper image: the `keepers` command with the compiled contract artifacts baked in.
# Three stages so no compiler, npm or build tool reaches the final image.

# 1. Contracts: forge + solcjs from npm compile contracts/ to ABIs and bytecode.
FROM node:20.18.1-bookworm-slim AS contracts
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tools/ tools/
COPY contracts/ contracts/
WORKDIR /src/contracts
RUN ../node_modules/.bin/forge build

# 2. Python: the keepers distribution and its dependencies in a venv.
FROM python:3.11.10-slim-bookworm AS python
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/keepers/venv
COPY pyproject.toml README.md /src/
COPY keepers/ /src/keepers/
COPY strategies/ /src/strategies/
COPY bench/ /src/bench/
RUN /opt/keepers/venv/bin/pip install /src

# 3. Runtime: slim Python, non-root, nothing writable needed outside mounted volumes.
FROM python:3.11.10-slim-bookworm
COPY --from=python /opt/keepers/venv /opt/keepers/venv
COPY --from=contracts /src/contracts/out /opt/keepers/artifacts
ENV PATH=/opt/keepers/venv/bin:$PATH \
    KEEPERS_ARTIFACTS=/opt/keepers/artifacts \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["keepers"]
CMD ["--help"]
