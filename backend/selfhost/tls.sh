# Sourced by the entry scripts: a self-signed certificate for this server (made once, kept with
# its key in the server's own volume, /data). A copy of the certificate goes to the shared /tls
# volume, where the app reads it as the one certificate it trusts for this server
# (S3_CA_BUNDLE, OPENBAO_CA_CERT). Names: the compose service, localhost, 127.0.0.1.
self_signed_certificate() {
    name="$1"
    if [ ! -s "/data/$name.key" ] || [ ! -s "/data/$name.crt" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=$name" \
            -addext "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,digitalSignature,keyCertSign" \
            -addext "extendedKeyUsage=serverAuth" \
            -keyout "/data/$name.key" -out "/data/$name.crt" 2>/dev/null
        chmod 0600 "/data/$name.key"
    fi
    cp "/data/$name.crt" "/tls/$name.crt.new"
    mv "/tls/$name.crt.new" "/tls/$name.crt"
}
