# Slim, non-root image of the relay. Build: docker build -t relay-directory .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY directory ./directory
COPY scripts/compile_hot_path.py ./scripts/
RUN python -m venv /opt/relay \
 && /opt/relay/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/relay/bin/pip install --no-cache-dir '.[server]'
# The hot path compiled with mypyc (relay/hot_path.py) into the installed package; gcc and
# mypy stay in this stage.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
 && /opt/relay/bin/pip install --no-cache-dir 'mypy>=1.11' 'setuptools>=68' \
 && PACKAGE="$(/opt/relay/bin/python -I -c 'import relay, pathlib; print(pathlib.Path(relay.__file__).parent)')" \
 && test -f "$PACKAGE/hot_path.py" \
 && /opt/relay/bin/python scripts/compile_hot_path.py --require --into "$PACKAGE/_compiled" \
 && /opt/relay/bin/pip uninstall -y -q mypy \
 && cd / && /opt/relay/bin/python -I -c 'import relay.hot_path as h; assert h.STATE == "compiled", h.STATE'

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
