# One image for the API and the worker (compose picks the command).
# BASE_IMAGE: any Debian-like image with Python 3.11 and pip as `python`/`pip` (CI builds one
# from Debian packages, where no registry can be reached).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=cosmogan

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    COSMOGAN_HOME=/data

WORKDIR /srv/cosmogan

# Dependency layer: only pyproject.toml (an empty README.md for its metadata), so edits to the
# code or the docs do not reinstall torch.
COPY pyproject.toml ./
RUN touch README.md && mkdir -p launcher app worker training/image training/emulator models \
    && for p in launcher app worker training training/image training/emulator models; do touch "$p/__init__.py"; done \
    && pip install . \
    && pip install --no-deps 'pzflow==4.0.0' \
    && pip uninstall -y cosmogan

# The code (and the shipped default weights in models/weights/).
COPY README.md ./
COPY launcher ./launcher
COPY app ./app
COPY worker ./worker
COPY training ./training
COPY models ./models
RUN pip install --no-deps .

RUN useradd --create-home --uid 1000 cosmogan \
    && mkdir -p /data && chown cosmogan:cosmogan /data
USER cosmogan
VOLUME ["/data"]
EXPOSE 8000

CMD ["cosmogan", "api", "--host", "0.0.0.0", "--port", "8000"]
