#!/bin/sh
# SeaweedFS for docker compose: master, volume server, filer and S3 gateway in one process.
# Only the S3 API (https, :8333) listens beyond the container; it accepts one identity, the
# app's S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY. The bucket (S3_BUCKET) is created once the
# server answers. Telemetry off: SeaweedFS reports cluster statistics home by default.
set -eu
. /selfhost/tls.sh
self_signed_certificate seaweedfs
mkdir -p /data/store
python3 - <<'PY'
import json, os
identity = {
    "name": "tenant-docs",
    "credentials": [
        {"accessKey": os.environ["S3_ACCESS_KEY_ID"], "secretKey": os.environ["S3_SECRET_ACCESS_KEY"]}
    ],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}
path = "/data/s3-identities.json"
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
    json.dump({"identities": [identity]}, file)
PY

# The bucket, in the background once the master hands out file ids (`weed shell` talks to the
# master and filer on the container's loopback).
(
    for _ in $(seq 120); do
        if echo "s3.bucket.list" | weed shell -master=127.0.0.1:9333 >/dev/null 2>&1; then
            echo "s3.bucket.create -name $S3_BUCKET" | weed shell -master=127.0.0.1:9333 2>&1 \
                | grep -v "already exist" || true
            echo "seaweedfs: bucket $S3_BUCKET ready"
            exit 0
        fi
        sleep 1
    done
    echo "seaweedfs: could not create bucket $S3_BUCKET" >&2
) &

exec weed server \
    -dir=/data/store \
    -ip=127.0.0.1 \
    -ip.bind=127.0.0.1 \
    -master.telemetry=false \
    -master.volumeSizeLimitMB=1024 \
    -master.electionTimeout=1s \
    -volume.max=0 \
    -filer \
    -s3 \
    -s3.ip.bind=0.0.0.0 \
    -s3.port=8333 \
    -s3.port.iceberg=0 \
    -s3.port.lance=0 \
    -s3.cert.file=/data/seaweedfs.crt \
    -s3.key.file=/data/seaweedfs.key \
    -s3.config=/data/s3-identities.json
