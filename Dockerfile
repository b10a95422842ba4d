# The served dashboard: Voilà on the drivendata package, nothing else (no JupyterLab, no
# compilers, no caches). Configured only through environment variables; see README.md,
# "Container and cloud deploy". Build for the Fargate platform:
#   docker buildx build --platform linux/amd64 -t drivendata .
# tests/test_container.py lints this file and replays it without Docker: keep to the
# instructions it understands (FROM, ARG, ENV, WORKDIR, COPY, RUN, USER, EXPOSE, HEALTHCHECK, CMD).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Fargate runs these tasks on x86_64: pinning the platform here makes a plain `docker build` on
# an ARM laptop produce the image that will run, not one that fails to start.
# hadolint ignore=DL3029
FROM --platform=linux/amd64 ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
# Exactly the locked versions: --no-deps installs nothing the lock does not name, and pip check
# fails the build when the lock misses something.
RUN /opt/venv/bin/pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY drivendata/ drivendata/
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools
COPY notebooks/dashboard.ipynb /opt/venv/share/drivendata/dashboard.ipynb

# hadolint ignore=DL3029
FROM --platform=linux/amd64 ${PYTHON_IMAGE}
# Unprivileged user; its home holds the embedded demo store and Jupyter's runtime files.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin dashboard
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8866 \
    DRIVENDATA_NOTEBOOK=/opt/venv/share/drivendata/dashboard.ipynb
USER 10001
WORKDIR /home/dashboard
EXPOSE 8866
# /healthz answers without starting a kernel; the demo backfills its store before it listens.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8866'), timeout=4)"]
# With DRIVENDATA_DATABASE_URL: the page on that source. Without: the embedded demo.
CMD ["python", "-m", "drivendata.server", "container"]
