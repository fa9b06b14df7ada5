# syntax=docker/dockerfile:1
# Container images of edge-reconciler (the Helm chart's image.repository and agent.image.repository).
#
#   docker build --target runtime -t edge-reconciler:0.1.0 .        controller and agent: no TensorFlow
#   docker build --target build   -t edge-reconciler-build:0.1.0 .  adds TensorFlow and the converters, for
#                                                                     model owners' CI (edgectl build)
#
# The runtime runs as uid 65532 and writes only to its volumes (the chart mounts the root filesystem read-only).

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[federated]"

FROM python:3.11-slim-bookworm AS runtime
# openssh-client: ssh-keygen -Y verify checks signed commits (--allowed-signers); nothing else from Debian.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 edge \
 && useradd --uid 65532 --gid 65532 --home-dir /home/edge --create-home edge
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "edge-reconciler[federated]" \
 && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/edge
USER 65532:65532
EXPOSE 8080 8501
ENTRYPOINT ["edgectl"]
CMD ["--help"]

FROM runtime AS build
USER root
COPY --from=wheels /wheels/edge_reconciler-*.whl /tmp/
RUN pip install --no-cache-dir "$(ls /tmp/edge_reconciler-*.whl)[build]" && rm /tmp/edge_reconciler-*.whl
USER 65532:65532
