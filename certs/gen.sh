#!/usr/bin/env bash
# certs/gen.sh makes development TLS material for trustproxy with openssl:
# a dev CA and a server certificate it issues, all ECDSA P-256.
#
#	certs/gen.sh [DIR [NAME]]
#
# DIR defaults to certs/dev in the repository (git-ignored). NAME is a DNS
# name or IP address the server certificate is valid for, besides localhost
# and 127.0.0.1 (e.g. trustproxy.internal). It writes, in DIR:
#
#	ca.pem, ca-key.pem                  the dev CA; kept when they exist, so
#	                                    clients that trust it go on doing so
#	trustproxy.pem, trustproxy-key.pem  trustproxy's certificate and key,
#	                                    issued anew on every run
#
# certs/README.md says where each file goes. Never use these outside
# development: the CA key sits unencrypted next to the certificates.
set -euo pipefail

usage() {
	echo "usage: $0 [DIR [NAME]]" >&2
	exit 2
}
case ${1:-} in -h | --help) usage ;; esac
(($# <= 2)) || usage

command -v openssl >/dev/null || {
	echo "gen.sh: openssl not found (apt-get install -y openssl)" >&2
	exit 1
}

repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
dir=${1:-$repo/certs/dev}
name=${2:-}

san="DNS:localhost,IP:127.0.0.1,IP:::1"
if [[ -n $name ]]; then
	if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
		san+=",IP:$name"
	else
		san+=",DNS:$name"
	fi
fi

mkdir -p "$dir"
cd "$dir"
umask 077 # keys are readable by their owner only; certificates are chmod 644 below
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ -e ca.pem && -e ca-key.pem ]]; then
	echo "gen.sh: keeping the CA in $dir/ca.pem"
else
	openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
	openssl req -new -x509 -sha256 -days 3650 -key ca-key.pem -out ca.pem \
		-subj "/O=trustproxy development/CN=trustproxy dev CA" \
		-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-addext "subjectKeyIdentifier=hash"
	chmod 644 ca.pem
	echo "gen.sh: made a CA in $dir/ca.pem"
fi

# 825 days: the longest validity macOS and iOS accept for a server certificate.
openssl ecparam -name prime256v1 -genkey -noout -out trustproxy-key.pem
openssl req -new -sha256 -key trustproxy-key.pem -out "$tmp/trustproxy.csr" \
	-subj "/O=trustproxy development/CN=${name:-localhost}"
cat >"$tmp/ext.cnf" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
openssl x509 -req -sha256 -days 825 -in "$tmp/trustproxy.csr" \
	-CA ca.pem -CAkey ca-key.pem -CAcreateserial -CAserial "$tmp/ca.srl" \
	-extfile "$tmp/ext.cnf" -out trustproxy.pem 2>/dev/null
chmod 644 trustproxy.pem
openssl verify -CAfile ca.pem trustproxy.pem >/dev/null
echo "gen.sh: made $dir/trustproxy.pem for $san"
