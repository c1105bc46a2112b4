#!/bin/sh
# OpenBao for docker compose: integrated (raft) storage in /data, https on :8200. It starts sealed; the
# one-shot `openbao-init` service initialises (first time), unseals it and enables transit.
set -eu
. /selfhost/tls.sh
self_signed_certificate openbao
mkdir -p /data/store
cat > /data/server.hcl <<HCL
storage "raft" {
  path = "/data/store"
  node_id = "openbao"
  # Production raft timings: the default (5) takes ~10 s to elect this single node leader.
  performance_multiplier = 1
}
listener "tcp" {
  address = "0.0.0.0:8200"
  tls_cert_file = "/data/openbao.crt"
  tls_key_file = "/data/openbao.key"
}
api_addr = "https://openbao:8200"
cluster_addr = "https://127.0.0.1:8201"
ui = false
log_level = "warn"
HCL
exec bao server -config=/data/server.hcl
