# Slim, non-root image of the relay. Build: docker build -t relay-directory .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY directory ./directory
RUN python -m venv /opt/relay \
 && /opt/relay/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/relay/bin/pip install --no-cache-dir '.[server]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/relay --create-home relay
COPY --from=build /opt/relay /opt/relay
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RELAY_DATA_DIR=/var/lib/relay
USER relay
WORKDIR /var/lib/relay
EXPOSE 8080
# exec form: SIGTERM reaches the relay itself, which drains and exits 0
CMD ["relay", "serve"]
