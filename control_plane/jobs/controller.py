"""HTTP routes of `/api/v1/jobs`: thin, declarative, delegating to JobService."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control_plane.accounts.auth import Principal
from control_plane.jobs.schemas import JobCreate, JobList, JobView, job_view
from control_plane.jobs.service import JobService


class JobsController(Controller):
    path = "/api/v1/jobs"
    tags = ["jobs"]

    @post("/", status_code=200, summary="Submit an inference job")
    async def submit(self, request: Request, data: JSONBody[JobCreate], principal: NamedDependency[Principal],
                     jobs: NamedDependency[JobService]) -> JobView:
        row = await jobs.submit(principal, data, request_id=request.scope.get("request_id"))
        return JobView(id=row["id"], status=row["status"], model=row["model"],
                       created_at=job_view(row | {"completed_at": None}).created_at)

    @get("/{job_id:str}", summary="Get job status and result")
    async def get_job(self, job_id: FromPath[str], principal: NamedDependency[Principal], jobs: NamedDependency[JobService]) -> JobView:
        return job_view(await jobs.get(principal, job_id))

    @delete("/{job_id:str}", status_code=200, summary="Cancel a pending or running job")
    async def cancel_job(self, job_id: FromPath[str], principal: NamedDependency[Principal],
                         jobs: NamedDependency[JobService]) -> JobView:
        return job_view(await jobs.cancel(principal, job_id))

    @get("/", summary="List your recent jobs")
    async def list_jobs(
        self, principal: NamedDependency[Principal], jobs: NamedDependency[JobService],
        limit: Annotated[int | None, QueryParameter(description="1-100, default 20")] = None,
        status: Annotated[str | None, QueryParameter(description="pending, processing, completed, failed, cancelled")] = None,
        since: Annotated[str | None, QueryParameter(description="ISO 8601 timestamp")] = None,
    ) -> JobList:
        rows = await jobs.list(principal, limit=limit, status=status, since=since)
        return JobList(jobs=[job_view(r) for r in rows])
