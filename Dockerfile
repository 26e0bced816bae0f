# syntax=docker/dockerfile:1
# flowattr's one image: the attribution job (`flowattr run`, StatefulSet) and the eBPF exporter
# (`flowattr export`, DaemonSet). Written without a container engine at hand and never built there:
# see docs/kubernetes.md ("What was verified").
#   docker build -t ghcr.io/flowattr/flowattr:0.1.0 .

# flowattr-cni's shim (exporter/cnishim): a static binary the container runtime runs on the host.
FROM golang:1.22-bookworm AS cnishim
COPY exporter/cnishim /src
RUN cd /src && CGO_ENABLED=0 go build -o /flowattr-cni .

FROM python:3.11-slim-bookworm AS build
# pytricia is published as source only, and the job's per-record modules are compiled from their Python
# source (setup.py): both need a C compiler, kept out of the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/flowattr
COPY . /src
RUN /opt/flowattr/bin/pip install --no-cache-dir /src
# exporter/capture.py loads <package dir>/../bpf/flowtrace.c, which the wheel does not carry: put the
# BPF source where that path points (a no-op once it ships inside the package).
RUN if [ -d /src/bpf ]; then \
      cp -r /src/bpf "$(/opt/flowattr/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bpf"; \
    fi

FROM python:3.11-slim-bookworm
# BCC for the exporter comes from Debian. python3-bpfcc is plain Python over libbcc, packaged for
# bookworm's /usr/bin/python3, which is also 3.11, so the venv imports it from Debian's
# dist-packages through a .pth file, as scripts/ebpf-deps.sh does on a host. Kernel headers are not
# in the image: the DaemonSet mounts the node's /lib/modules and /usr/src.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-bpfcc libelf1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/flowattr /opt/flowattr
COPY --from=cnishim /flowattr-cni /opt/flowattr/libexec/flowattr-cni
RUN echo /usr/lib/python3/dist-packages \
      > "$(/opt/flowattr/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/debian-bcc.pth" \
 && /opt/flowattr/bin/python -c "import bcc, dataflow.cli, exporter.cli"
# The job runs as this user (runAsNonRoot); the exporter's pod overrides it with uid 0, because its
# capabilities only take effect for root.
RUN groupadd --gid 10001 flowattr \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flowattr
ENV PATH=/opt/flowattr/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
# The pods mount a writable emptyDir here; the root filesystem is read-only.
WORKDIR /tmp
ENTRYPOINT ["flowattr"]
CMD ["--help"]
