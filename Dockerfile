# fedstock: one image for the aggregation server and the province clients.
#   docker build -t fedstock:latest .
#   docker run --rm fedstock:latest                      # prints help
#   docker run --rm fedstock:latest python -m server --help
# Without a registry, build a local base first (docker/base-image.sh) and pass
#   --build-arg BASE_IMAGE=fedstock-base:bookworm
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# Lets scripts find this project's images, e.g. to prune the dangling ones rebuilds leave.
LABEL org.opencontainers.image.title=fedstock

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The build happens in /tmp/src; the code ends up installed (and byte-compiled) in
# site-packages only, so `python -m server` and `python -m client` work from any directory.
WORKDIR /tmp/src

# Runtime dependencies first, read from pyproject.toml (no dev extras), in their own layer so
# that code changes do not reinstall them. The packages' own test suites and C headers are
# never used at run time; deleting them in the same layer saves about 120 MB.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && pip install --no-cache-dir -r requirements.txt \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && for pkg in numpy pandas pyarrow scipy sklearn; do \
        find "$site/$pkg" -depth -type d -name tests -exec rm -rf {} + ; \
    done \
 && rm -rf "$site/pyarrow/include" "$site/pyarrow/src"

# Only the code that runs.
COPY common/ common/
COPY server/ server/
COPY client/ client/
COPY proto/ proto/
RUN pip install --no-cache-dir --no-deps . \
 && cd / && rm -rf /tmp/src

# Run as an unprivileged user. /results is where the server writes by default, /receipts where a
# province keeps its ledger receipts; they are created here owned by that user so a named
# volume mounted on either starts out writable.
RUN groupadd --gid 10001 fedstock \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /app --shell /usr/sbin/nologin fedstock \
 && mkdir -p /results /data /receipts /var/cache/fedstock/numba \
 && chown fedstock:fedstock /results /receipts /var/cache/fedstock/numba
USER fedstock
WORKDIR /app

# numba's machine code for every kernel a fit runs, compiled here once, as the containers' user,
# into a cache folder it owns: without it every container compiled them at its first fit (the
# build context has no __pycache__, and site-packages is not the user's to write). A machine
# whose CPU differs from the build's recompiles, writing into the same folder.
ENV NUMBA_CACHE_DIR=/var/cache/fedstock/numba
RUN python -m client.kernels

CMD ["sh", "-c", "echo 'fedstock image: run one of'; echo '  python -m server --help'; echo '  python -m client --help'; echo '  python -m server.healthcheck --help'"]
