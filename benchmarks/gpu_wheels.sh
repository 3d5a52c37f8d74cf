#!/usr/bin/env bash
# Wheels of the service's Python dependencies that the lent GPU machines' image lacks, for
# Python 3.12 on x86-64 Linux, at the versions installed in this checkout's .venv (the ones the
# test suite ran with), saved in .whl/ (ignored by git). Run it here, where pip reaches PyPI, then
# name .whl in the device call's `carry`: benchmarks/gpu_check.sh installs them there (nothing can
# be fetched on that machine) so that benchmarks/gpu_service.py can run the worker's path on the
# GPU. The image already has numpy, prometheus-client, anyio, httpx, markupsafe, pyyaml (KINDS.md
# of the device tool lists it).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="alembic amqp annotated-types billiard celery click click-didyoumean click-plugins click-repl kombu mako psycopg psycopg-binary pydantic pydantic-core
pydantic-settings python-dotenv sqlalchemy tenacity typing-extensions typing-inspection tzlocal uuid6 vine prompt-toolkit wcwidth python-dateutil six"
PINS=$(.venv/bin/python - $PACKAGES <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $PINS
ls .whl
du -sh .whl
