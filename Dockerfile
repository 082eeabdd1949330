# The SupportMesh image: every server and the CLI. compose.yaml runs one container per server.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY servers servers
COPY orchestrator orchestrator
COPY clients clients
RUN pip install --no-cache-dir . && useradd --create-home supportmesh
USER supportmesh
ENTRYPOINT ["supportmesh"]
