#!/bin/sh
# Runs one build command with the optional build inputs, mounted at /inputs from the INPUTS
# image (scripts/images.sh makes it; empty by default): extra CA certificates (/inputs/ca/*.crt,
# e.g. a TLS-intercepting proxy's) appended to the system bundle for this command only, and a
# local wheel folder (/inputs/wheels) pip looks in first. TORCH_INDEX is torch's CPU index.
set -eu
if ls /inputs/ca/*.crt >/dev/null 2>&1; then
  cat /etc/ssl/certs/ca-certificates.crt /inputs/ca/*.crt > /tmp/ca-bundle.pem
  export PIP_CERT=/tmp/ca-bundle.pem SSL_CERT_FILE=/tmp/ca-bundle.pem
fi
if [ -d /inputs/wheels ]; then export PIP_FIND_LINKS=/inputs/wheels; fi
if [ -n "${TORCH_INDEX:-}" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX"; fi
status=0
"$@" || status=$?
rm -f /tmp/ca-bundle.pem
exit $status
