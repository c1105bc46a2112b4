"""Ingestion jobs of the caller's tenant (admins): thin HTTP layer over app.services.jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminTenant
from app.api.responses import API_ERRORS, error_response
from app.schemas import ingest_job as schemas
from app.services import jobs as jobs_service

router = APIRouter(prefix="/ingest-jobs", tags=["documents"], responses=API_ERRORS)


@router.get(
    "",
    response_model=schemas.IngestJobList,
    responses={403: error_response("Only admins of the tenant may list its jobs.")},
    summary="List the tenant's ingestion jobs (admins)",
)
async def list_ingest_jobs(
    tenant: AdminTenant,
    status: Annotated[schemas.JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> schemas.IngestJobList:
    """The jobs that extract, chunk and embed the tenant's documents, newest first."""
    rows = await jobs_service.list_tenant_jobs(tenant.session, tenant.actor, status, limit)
    return schemas.IngestJobList(items=[schemas.IngestJob.model_validate(row) for row in rows])
