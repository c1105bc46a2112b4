"""`verify-audit` and `audit-anchor`: check the audit hash chain, export a signed anchor.

Both run as the provisioning role (every tenant, and the chain-head table). Exit status:
0 OK, 1 the chain (or the anchor's signature) does not verify, 2 bad input or configuration.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import NoReturn

import typer

from app.cli.admin import EXIT_BAD_INPUT, fail, parse_uuid, run_admin
from app.core.config import settings_or_exit
from app.schemas.audit_integrity import AuditAnchor, AuditChainVerification
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service

EXIT_BROKEN = 1


def _broken(message: str) -> NoReturn:
    """The chain or the anchor does not verify: one line, exit 1."""
    print(message, file=sys.stderr)
    raise typer.Exit(EXIT_BROKEN)


def _verify(tenant_id: uuid.UUID | None, anchor: AuditAnchor | None) -> AuditChainVerification:
    return run_admin(
        lambda session: audit_integrity_service.verify_chain(
            session, tenant_id=tenant_id, anchor=anchor
        )
    )


def _describe_break(verification: AuditChainVerification) -> str:
    broken = [status for status in verification.tenants if not status.ok]
    first = verification.first_break
    assert first is not None
    where = f"tenant {first.tenant_id}, sequence {first.chain_seq}"
    if first.row_id is not None:
        where += f", row {first.row_id}"
    more = f" (and {len(broken) - 1} more broken tenants)" if len(broken) > 1 else ""
    return f"audit chain BROKEN: {where}: {first.problem.value}: {first.detail}{more}"


def verify_audit(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's chain (UUID)."),
    anchor: Path | None = typer.Option(
        None, "--anchor", help="A signed anchor from `audit-anchor` the chain must still contain."
    ),
) -> None:
    """Recompute the audit hash chain; print OK with counts and heads, or the first broken link."""
    settings = settings_or_exit()
    tenant_id = parse_uuid(tenant, "--tenant") if tenant is not None else None
    opened: AuditAnchor | None = None
    if anchor is not None:
        try:
            raw = anchor.read_bytes()
        except OSError as exc:
            fail(f"--anchor: cannot read {anchor}: {exc.strerror}", EXIT_BAD_INPUT)
        try:
            key = audit_anchor_service.verify_key(settings)
        except audit_anchor_service.AnchorError as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        try:
            opened = audit_anchor_service.open_anchor(raw, key)
        except audit_anchor_service.AnchorError as exc:
            _broken(f"anchor REJECTED: {anchor}: {exc}")

    verification = _verify(tenant_id, opened)
    if not verification.ok:
        _broken(_describe_break(verification))
    checks = ["chain heads checked" if verification.heads_checked else "chain heads not readable"]
    if opened is not None:
        checks.append(f"anchor of {opened.anchored_at.isoformat()} checked")
    typer.echo(
        f"audit chain OK: {verification.tenant_count} tenants, {verification.row_count} rows "
        f"({'; '.join(checks)})"
    )
    for status in verification.tenants:
        typer.echo(
            f"  tenant {status.tenant_id}: {status.row_count} rows, "
            f"head {status.head_seq} {status.head_hash}"
        )


def audit_anchor(
    output: Path | None = typer.Option(
        None, "--output", help="Write the signed anchor here (default: standard output)."
    ),
) -> None:
    """Verify the chain, then export every tenant's head as JSON signed with Ed25519."""
    settings = settings_or_exit()
    try:
        key = audit_anchor_service.signing_key(settings)
    except audit_anchor_service.AnchorError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    verification = _verify(None, None)
    if not verification.ok:
        _broken(_describe_break(verification))
    signed = audit_anchor_service.sign_anchor(
        audit_anchor_service.anchor_from_verification(verification), key
    )
    document = signed.model_dump_json(indent=2) + "\n"
    if output is None:
        typer.echo(document, nl=False)
        return
    try:
        output.write_text(document)
    except OSError as exc:
        fail(f"--output: cannot write {output}: {exc.strerror}", EXIT_BAD_INPUT)
    typer.echo(
        f"anchor written to {output}: {len(signed.anchor.heads)} tenant heads, "
        f"key {signed.key_fingerprint[:16]}…",
        err=True,
    )
