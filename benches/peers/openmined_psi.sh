#!/usr/bin/env bash
# Runs OpenMined PSI (https://github.com/OpenMined/PSI, `openmined-psi` on
# PyPI) in cardinality mode on the key columns of two CSV files, as the
# benchmark's peer: `cleanroom-coordinator bench --peers` calls it with the
# same tables it gives the cleanroom nodes. Creates its own venv beside this
# script on first use. Prints one JSON line: {"peer": ..., "seconds": ...,
# "cardinality": ...}; the seconds cover the protocol (setup, request,
# response, intersection size), not Python's start-up or reading the files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PEER_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet "openmined-psi" >&2
fi
exec "$venv/bin/python" "$here/openmined_psi.py" "$1" "$2"
