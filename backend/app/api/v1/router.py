"""The /api/v1 router: every v1 resource router is included here."""

from fastapi import APIRouter

from app.api.v1 import audit_logs, dev, documents, health, ingest_jobs, me, tenant_export, users

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(health.router)
api_router.include_router(me.router)
api_router.include_router(documents.router)
api_router.include_router(users.router)
api_router.include_router(audit_logs.router)
api_router.include_router(ingest_jobs.router)
api_router.include_router(tenant_export.router)

# Mounted by create_app only when the app is its own (dev) token issuer.
dev_router = APIRouter(prefix="/api/v1")
dev_router.include_router(dev.router)
