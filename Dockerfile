# asyncjob-exporter container image.
#   docker build -t asyncjob-exporter .
#   docker run -p 9879:9879 -v $PWD/config.yaml:/etc/asyncjob-exporter/config.yaml:ro \
#     -v asyncjob-data:/var/lib/asyncjob-exporter asyncjob-exporter
# Stage 1 builds wheels for the exporter and its dependencies; stage 2 installs only those.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="asyncjob-exporter" \
      org.opencontainers.image.description="Prometheus exporter for long-running AI jobs"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter \
 && mkdir -p /var/lib/asyncjob-exporter \
 && chown 10001 /var/lib/asyncjob-exporter
# What the exporter knows survives a restart here (--storage.path); mount a volume on it.
VOLUME ["/var/lib/asyncjob-exporter"]
USER 10001
EXPOSE 9879
# The config is mounted here; the default command reads it.
WORKDIR /etc/asyncjob-exporter
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9879/-/healthy', timeout=3)"]
ENTRYPOINT ["asyncjob-exporter"]
CMD ["--config.file=/etc/asyncjob-exporter/config.yaml", "--storage.path=/var/lib/asyncjob-exporter", "--log.format=json"]
