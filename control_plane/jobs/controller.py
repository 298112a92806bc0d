"""HTTP routes of `/api/v1/jobs`: thin, declarative, delegating to JobService."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream

from control_plane.accounts.auth import Principal
from control_plane.credits.ledger import credits_used_header
from control_plane.jobs.schemas import JobCreate, JobList, JobView, job_view
from control_plane.idempotency.service import fingerprint
from control_plane.jobs.service import JobService, StatusFilter
from control_plane.lib.timestamps import DATE_TIME_SCHEMA
from control_plane.routing import fallback
from control_plane.runtime import Runtime
from control_plane.streaming import TokenRelay, native


class JobsController(Controller):
    path = "/api/v1/jobs"
    tags = ["jobs"]

    @post("/", status_code=200, summary="Submit an inference job",
          description='With "stream": true the answer is an SSE stream of the job (see GET /api/v1/jobs/{id}/stream).')
    async def submit(self, request: Request, data: JSONBody[JobCreate], principal: NamedDependency[Principal],
                     jobs: NamedDependency[JobService], relay: NamedDependency[TokenRelay],
                     runtime: NamedDependency[Runtime]) -> Response[JobView] | Stream:
        slot = relay.admit(principal.account_id) if data.stream else None
        try:  # with an Idempotency-Key, a retry gets the job the first request created (issue 6)
            row, replayed = await runtime.idempotency.submit(
                principal, request.headers.get("idempotency-key"), fingerprint("POST /api/v1/jobs", data),
                lambda: jobs.submit(principal, data, request_id=request.scope.get("request_id")))
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        headers = fallback.headers(row) | ({"Idempotent-Replayed": "true"} if replayed else {})
        if slot is not None:
            if replayed:
                slot.release()
                response = await native.job_stream(relay, jobs, principal, row["id"], last_event_id=None)
            else:
                response = native.submitted_stream(relay, slot, row)
            response.headers.update(headers)
            return response
        view = job_view(row | {"completed_at": None}) if not replayed else job_view(row)
        return Response(JobView(id=row["id"], status=row["status"], model=row["model"], created_at=view.created_at,
                                routing=view.routing, fallback_from=view.fallback_from,
                                fallback_depth=view.fallback_depth), headers=headers)

    @get("/{job_id:str}/stream", summary="Stream a job's tokens (SSE)", media_type="text/event-stream",
         description="`job`, then `token` events (id = sequence number) in order, then `done` or `error`. "
                     "Reconnect with Last-Event-ID to resume; leaving does not cancel the job.")
    async def stream_job(
        self, job_id: FromPath[str], principal: NamedDependency[Principal], jobs: NamedDependency[JobService],
        relay: NamedDependency[TokenRelay],
        last_event_id: Annotated[str | None, HeaderParameter(
            name="Last-Event-ID", required=False, pattern=r"^[0-9]{1,18}$",
            description="the id of the last event received (a token sequence number): resume after it")] = None,
    ) -> Stream:
        return await native.job_stream(relay, jobs, principal, job_id, last_event_id=last_event_id)

    @get("/{job_id:str}", summary="Get job status and result")
    async def get_job(self, job_id: FromPath[str], principal: NamedDependency[Principal],
                      jobs: NamedDependency[JobService]) -> Response[JobView]:
        row = await jobs.get(principal, job_id)
        return Response(job_view(row), headers=credits_used_header(row) | fallback.headers(row))

    @delete("/{job_id:str}", status_code=200, summary="Cancel a pending or running job")
    async def cancel_job(self, job_id: FromPath[str], principal: NamedDependency[Principal],
                         jobs: NamedDependency[JobService]) -> JobView:
        return job_view(await jobs.cancel(principal, job_id))

    @get("/", summary="List your recent jobs")
    async def list_jobs(
        self, principal: NamedDependency[Principal], jobs: NamedDependency[JobService],
        limit: Annotated[int | None, QueryParameter(ge=1, le=100, description="1-100, default 20")] = None,
        status: Annotated[StatusFilter | None, QueryParameter(
            description="all (the default), pending, processing, completed, failed or cancelled")] = None,
        since: Annotated[str | None, QueryParameter(description="RFC 3339 date-time",
                                                    schema_extra=DATE_TIME_SCHEMA)] = None,
    ) -> JobList:
        rows = await jobs.list(principal, limit=limit, status=status, since=since)
        return JobList(jobs=[job_view(r) for r in rows])
