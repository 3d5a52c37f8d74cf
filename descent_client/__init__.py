"""The Descent client library: the HTTP API in Python, with the API's own pydantic models.

    from descent_client import Client, statquest_job
    client = Client()                        # DESCENT_URL / DESCENT_API_KEY, else 127.0.0.1:8000
    job = client.submit(statquest_job())     # a dict or a JobCreate
    job.wait(progress=True)                  # a live progress line; the final JobRead
    print(job.parameters().layers[1].bias)   # [2.6085...]: b3 of the StatQuest video

Every error is a ``DescentError`` whose text is one readable line.
"""

from descent_client.client import DEFAULT_URL, Client
from descent_client.errors import (
    ApiError, Conflict, ConnectionFailed, DescentError, FieldError, InvalidId, InvalidRequest, NotFound, TooManyRequests,
    Unauthorized, Unavailable, WaitTimeout,
)
from descent_client.resources import Job, Sweep
from services.examples import statquest_job
from services.spec import HistoryRead, JobCreate, JobRead, ParametersRead
from services.sweep_spec import LeaderEntry, SweepCreate, SweepRead

__all__ = [
    "DEFAULT_URL", "ApiError", "Client", "Conflict", "ConnectionFailed", "DescentError", "FieldError", "HistoryRead",
    "InvalidId", "InvalidRequest", "Job", "JobCreate", "JobRead", "LeaderEntry", "NotFound", "ParametersRead", "Sweep",
    "SweepCreate", "SweepRead", "TooManyRequests", "Unauthorized", "Unavailable", "WaitTimeout", "statquest_job",
]
