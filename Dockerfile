# One image for the API, the trainer and the MLflow server of docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first, so code edits do not reinstall them.
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY pipelines ./pipelines
COPY registry_bridge ./registry_bridge
COPY api ./api
COPY bench ./bench
COPY demo ./demo
RUN pip install --upgrade pip && pip install . \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /app/outputs /app/reports /app/data /app/mlruns \
    && chown -R app /app
USER app

EXPOSE 8000
# Inside a container the API must listen on all interfaces; compose supplies the token.
ENV API_HOST=0.0.0.0 API_PORT=8000
CMD ["python", "-m", "api"]
