"""Verify a tenant export archive without the application: the standard library, plus
`cryptography` for the anchor's Ed25519 signature.

Usage: python verify_tenant_export.py ARCHIVE [--public-key KEY] [--anchor ANCHOR_FILE]

Checks, reading the archive once, front to back (memory stays flat):
- every member's SHA-256 and size against manifest.json (the last member); none missing, none
  extra, the format is tenant-export/1;
- the audit chain (audit/chain/*.jsonl): sequence 1, 2, 3, ... without gaps, each row's
  prev_hash is the previous row's hash, each row_hash recomputed from its canonical fields
  (docs/AUDIT_INTEGRITY.md, encoding audit_logs.v1), every row in the archive's tenant;
- audit/anchor.json: with --public-key (base64 of the 32 raw bytes, or a PEM file), its Ed25519
  signature, and that the signed head is the last row of the chain: the archive holds the whole
  chain up to the moment it was signed;
- --anchor: an anchor taken earlier with `audit-anchor` (checked with the same key): the chain
  must still contain its head for this tenant.
Exit status 0: verified (the head is printed). 1: anything does not verify (the first problem
is printed). 2: bad usage.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

FORMAT = "tenant-export/1"
ENCODING_VERSION = "audit_logs.v1"


class BrokenArchiveError(Exception):
    """The archive does not verify."""


def netstring(value: str | None) -> bytes:
    """`<byte length>:<UTF-8 bytes>,`, or `-,` for NULL."""
    if value is None:
        return b"-,"
    raw = value.encode("utf-8")
    return b"%d:%s," % (len(raw), raw)


def load_public_key(text: str) -> Any:
    """An Ed25519 public key from base64 of its 32 raw bytes, or from a PEM file's path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if Path(text).is_file():
        return serialization.load_pem_public_key(Path(text).read_bytes())
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text))


def open_signed_anchor(document: dict[str, Any], key: Any) -> dict[str, Any]:
    """The anchor object of a signed anchor document, once its signature verified."""
    from cryptography.exceptions import InvalidSignature

    signed = json.dumps(
        document["anchor"], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode()
    try:
        key.verify(base64.b64decode(document["signature"]), signed)
    except (InvalidSignature, KeyError, ValueError):
        raise BrokenArchiveError(
            "the anchor's signature does not verify with the given key"
        ) from None
    anchor: dict[str, Any] = document["anchor"]
    return anchor


class Chain:
    """The audit chain's state while its rows stream past."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.next_seq = 1
        self.prev_hash = "0" * 64
        self.seen: dict[int, str] = {}

    def add(self, row: dict[str, Any]) -> None:
        seq = row["chain_seq"]
        fields = row["canonical"]
        if seq != self.next_seq:
            raise BrokenArchiveError(
                f"audit chain: sequence {seq} where {self.next_seq} was expected"
            )
        if row["prev_hash"] != self.prev_hash:
            raise BrokenArchiveError(
                f"audit chain: sequence {seq}: prev_hash is not the previous row's hash"
            )
        if fields[0] != self.tenant_id:
            raise BrokenArchiveError(f"audit chain: sequence {seq} belongs to tenant {fields[0]}")
        encoding = netstring(ENCODING_VERSION) + b"".join(map(netstring, fields))
        if hashlib.sha256(encoding).hexdigest() != row["row_hash"]:
            raise BrokenArchiveError(
                f"audit chain: sequence {seq}: contents do not match its row_hash"
            )
        self.next_seq, self.prev_hash = seq + 1, row["row_hash"]

    @property
    def head(self) -> tuple[int, str]:
        return self.next_seq - 1, self.prev_hash


def verify(archive: Path, key: Any, external_anchor: dict[str, Any] | None) -> str:
    """Check the archive; return the summary line, or raise BrokenArchiveError."""
    digests: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    header: dict[str, Any] | None = None
    anchor_document: dict[str, Any] | None = None
    chain: Chain | None = None
    anchored_seqs: dict[int, str] = {}
    if external_anchor is not None:
        anchored_seqs = {}  # filled once the tenant is known
    with tarfile.open(archive, mode="r|") as tar:
        for member in tar:
            if manifest is not None:
                raise BrokenArchiveError(f"{member.name}: a member after manifest.json")
            if not member.isfile():
                raise BrokenArchiveError(f"{member.name}: not a regular file")
            stream = tar.extractfile(member)
            assert stream is not None
            if member.name == "manifest.json":
                manifest = json.loads(stream.read())
                continue
            digest = hashlib.sha256()
            size = 0
            if member.name.startswith("audit/chain/"):
                if chain is None:
                    raise BrokenArchiveError("the audit chain comes before archive.json")
                for line in stream:
                    digest.update(line)
                    size += len(line)
                    chain.add(json.loads(line))
                    seq, row_hash = chain.head
                    if seq in anchored_seqs and anchored_seqs.pop(seq) != row_hash:
                        raise BrokenArchiveError(
                            f"the external anchor's head at sequence {seq} differs"
                        )
            else:
                data = b""
                small = member.name in ("archive.json", "audit/anchor.json")
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    if small:
                        data += chunk
                if member.name == "archive.json":
                    header = json.loads(data)
                    if header.get("format") != FORMAT:
                        raise BrokenArchiveError(
                            f"format {header.get('format')!r}, expected {FORMAT}"
                        )
                    chain = Chain(header["tenant_id"])
                    if external_anchor is not None:
                        anchored_seqs = {
                            head["chain_seq"]: head["row_hash"]
                            for head in external_anchor["heads"]
                            if head["tenant_id"] == header["tenant_id"]
                        }
                elif member.name == "audit/anchor.json":
                    anchor_document = json.loads(data)
            digests[member.name] = {"sha256": digest.hexdigest(), "bytes": size}

    if manifest is None or header is None or chain is None or anchor_document is None:
        raise BrokenArchiveError(
            "incomplete archive: manifest.json, archive.json or the anchor is missing"
        )
    if manifest.get("format") != FORMAT or manifest.get("tenant_id") != header["tenant_id"]:
        raise BrokenArchiveError("manifest.json does not describe this archive")
    listed = manifest["files"]
    for name in sorted(set(listed) | set(digests)):
        if name not in digests:
            raise BrokenArchiveError(f"{name}: listed in the manifest but missing")
        if name not in listed:
            raise BrokenArchiveError(f"{name}: in the archive but not in the manifest")
        if listed[name] != digests[name]:
            raise BrokenArchiveError(f"{name}: SHA-256 or size differs from the manifest")
    if anchored_seqs:
        raise BrokenArchiveError(
            f"the external anchor's head (sequence {min(anchored_seqs)}) is not in the chain"
        )

    seq, head_hash = chain.head
    if "signature" in anchor_document:
        if key is None:
            raise BrokenArchiveError("the anchor is signed: give --public-key to check it")
        anchor = open_signed_anchor(anchor_document, key)
        heads = [h for h in anchor["heads"] if h["tenant_id"] == header["tenant_id"]]
        if heads != [] and (heads[0]["chain_seq"], heads[0]["row_hash"]) != (seq, head_hash):
            raise BrokenArchiveError(
                f"the signed head is sequence {heads[0]['chain_seq']} but the archive's chain "
                f"ends at {seq}: the archive does not hold the whole chain"
            )
        if heads == [] and seq != 0:
            raise BrokenArchiveError("the signed anchor has no head for this tenant")
        signed = "signed head matches"
    else:
        unsigned = anchor_document["unsigned_head"]
        if (unsigned["chain_seq"] or 0, unsigned["row_hash"] or "0" * 64) != (seq, head_hash):
            raise BrokenArchiveError("the archive's unsigned head is not the chain's last row")
        signed = "UNSIGNED head (compare it with an anchor from audit-anchor)"
    return (
        f"OK archive of tenant {header['tenant_id']}: {len(digests)} files match the manifest; "
        f"audit chain of {seq} rows, head {head_hash}; {signed}"
    )


def main(argv: list[str]) -> int:
    """Parse the arguments, verify, print one line; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--public-key", help="Ed25519 public key: base64 raw, or a PEM file")
    parser.add_argument("--anchor", type=Path, help="an anchor file taken with audit-anchor")
    args = parser.parse_args(argv)
    key = load_public_key(args.public_key) if args.public_key else None
    external = None
    try:
        if args.anchor is not None:
            if key is None:
                raise BrokenArchiveError("--anchor needs --public-key")
            external = open_signed_anchor(json.loads(args.anchor.read_text()), key)
        print(verify(args.archive, key, external))
    except BrokenArchiveError as problem:
        print(f"BROKEN {args.archive}: {problem}")
        return 1
    except (OSError, tarfile.TarError, json.JSONDecodeError, KeyError, TypeError) as exc:
        print(f"BROKEN {args.archive}: unreadable archive: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
