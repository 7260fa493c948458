#!/bin/sh
# How the test certificates here were made (once; valid for 100 years). Run from this directory.
#   ca.crt / ca.key           the test CA
#   server.crt / server.key   signed by it, for 127.0.0.1, ::1 and localhost
#   client.crt / client.key   signed by it, a client certificate
#   other-ca.crt              an unrelated CA: trusting it must fail the handshake
set -eu
days=36500
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ca() {
  ec "$1.key"
  openssl req -x509 -new -key "$1.key" -days $days -subj "/CN=$2" -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() {
  ec "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
    -extfile "$1.ext" -out "$1.crt"
  rm "$1.csr" "$1.ext"
}
ca ca "Perch test CA"
ca other-ca "Perch other test CA"
rm other-ca.key
leaf server "perch test server" serverAuth "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"
leaf client "perch test client" clientAuth ""
rm -f ca.srl
