#!/usr/bin/env bash
# Makes sure the real servers the tests talk to are running on this machine: PostgreSQL on
# 127.0.0.1:5432 (trust auth). Starts it if it has stopped; says what to install if it is missing.
set -euo pipefail

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1; then
    echo "PostgreSQL client tools are missing: apt-get install postgresql" >&2
    exit 1
fi
if ! pg_ready; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
    if ! ls /etc/postgresql >/dev/null 2>&1; then
        echo "PostgreSQL is not installed: apt-get install postgresql (then allow trust auth on 127.0.0.1)" >&2
        exit 1
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
    pg_ready || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
echo "PostgreSQL is up on 127.0.0.1:5432"
