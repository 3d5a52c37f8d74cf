# One image for every Descent process: api, worker and the one-shot migrate step.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY services ./services
COPY migrations ./migrations
RUN pip install '.[fast]' && useradd --create-home descent
USER descent

EXPOSE 8000
CMD ["descent", "api", "--host", "0.0.0.0", "--port", "8000"]
