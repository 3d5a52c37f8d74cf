# One image for every Descent process on the CPU: migrate, api, scheduler and worker
# (docker-compose.yml). GPU workers use Dockerfile.gpu, which installs the same package.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The dependencies first, read from pyproject.toml, so a source edit does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['fast']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Everything the package is built from (pyproject.toml's packages and package data).
COPY alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY services ./services
COPY migrations ./migrations
COPY descent_client ./descent_client
RUN pip install --no-deps . && useradd --create-home --uid 10001 descent
USER descent

EXPOSE 8000
CMD ["descent", "api", "--host", "0.0.0.0", "--port", "8000"]
