#!/usr/bin/env bash
# A self-signed certificate for trying TLS locally and for docker-compose.tls.yml: an ECDSA
# P-256 key and a certificate for localhost, 127.0.0.1, node1 and node2 (the compose nodes'
# names), valid $TLS_DAYS days (365), written to deploy/tls/cert.pem and deploy/tls/key.pem
# (git ignores deploy/tls/).
#
#   scripts/tls-cert.sh           make them unless a certificate is already there: one that
#                                 matches its key and is valid for at least 30 more days is
#                                 kept (the script is safe to run on every `up`)
#   scripts/tls-cert.sh --force   make new ones anyway
#
# TLS_DIR writes elsewhere. Nothing trusts a self-signed certificate: `curl -k` or
# `curl --cacert deploy/tls/cert.pem`; a browser warns until the certificate is trusted (import
# cert.pem into the browser or the system store), and tests start Chromium with
# --ignore-certificate-errors. For anything public use a real CA's certificate instead.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${TLS_DIR:-$root/deploy/tls}
days=${TLS_DAYS:-365}
names=DNS:localhost,IP:127.0.0.1,DNS:node1,DNS:node2
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

cert=$dir/cert.pem
key=$dir/key.pem
if [ "$force" = 0 ] && [ -s "$cert" ] && [ -s "$key" ] \
  && openssl x509 -in "$cert" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 \
  && [ "$(openssl x509 -in "$cert" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ]; then
  echo "kept $cert (valid for 30 more days and matches $key; --force makes a new one)"
  exit 0
fi

mkdir -p "$dir"
# Written next to the final files, then renamed: a failed run leaves the old pair intact.
tmp=$(mktemp -d "$dir/.new.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# A leaf, not a CA (basicConstraints CA:FALSE): browsers refuse a CA certificate as a server's.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj /CN=localhost -addext "subjectAltName=$names" \
  -addext basicConstraints=critical,CA:FALSE \
  -addext keyUsage=critical,digitalSignature \
  -addext extendedKeyUsage=serverAuth \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
# The key stays private to its owner: the containers read it as root (rootful Docker) or as
# this user (rootless Docker, Podman).
chmod 600 "$tmp/key.pem"
chmod 644 "$tmp/cert.pem"
mv "$tmp/key.pem" "$key"
mv "$tmp/cert.pem" "$cert"
echo "wrote $cert and $key ($names, $days days)"
