#!/usr/bin/env bash
# Makes sure the real servers the tests talk to are running on this machine: PostgreSQL on
# 127.0.0.1:5432 (trust auth), MariaDB on 127.0.0.1:3306 (root, no password) and Redis on
# 127.0.0.1:6379. Starts each if it has stopped; says what to install if one is missing.
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

# MariaDB on 127.0.0.1:3306 (root without a password).
maria_ready() { mysqladmin -h 127.0.0.1 -P 3306 -uroot ping >/dev/null 2>&1; }
if ! command -v mysqladmin >/dev/null 2>&1; then
    echo "MariaDB is missing: apt-get install mariadb-server" >&2
    exit 1
fi
if ! maria_ready; then
    echo "MariaDB is not answering on 127.0.0.1:3306; starting it"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 30); do maria_ready && break; sleep 1; done
    maria_ready || { echo "MariaDB did not start" >&2; exit 1; }
fi
echo "MariaDB is up on 127.0.0.1:3306"

# Redis on 127.0.0.1:6379 (default user, no password).
redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! command -v redis-server >/dev/null 2>&1; then
    echo "Redis is missing: apt-get install redis-server" >&2
    exit 1
fi
if ! redis_ready; then
    echo "Redis is not answering on 127.0.0.1:6379; starting it"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis_ready && break; sleep 1; done
    redis_ready || { echo "Redis did not start" >&2; exit 1; }
fi
echo "Redis is up on 127.0.0.1:6379"

# OpenSSH's server, for the SSH certificate tests (each test starts its own sshd on a free
# loopback port; the system's ssh service is not used).
if [ ! -x /usr/sbin/sshd ]; then
    echo "Installing openssh-server (Debian's package) for the SSH tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null; }
fi
echo "sshd is installed: $(/usr/sbin/sshd -V 2>&1 | head -n1)"

# rsyslog with its TLS driver (gnutls), for the audit forwarding tests (each test starts its own
# rsyslogd on free loopback ports; the system's syslog service is not used).
if [ ! -x /usr/sbin/rsyslogd ] || ! ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1; then
    echo "Installing rsyslog and rsyslog-gnutls (Debian's packages) for the audit sink tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsyslog rsyslog-gnutls >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsyslog rsyslog-gnutls >/dev/null; }
fi
echo "rsyslogd is installed: $(/usr/sbin/rsyslogd -v 2>&1 | head -n1)"

# SoftHSM2, a PKCS#11 token in software, for the auto-unseal tests (each test makes its own token
# directory through SOFTHSM2_CONF; the system's tokens are not used).
if [ ! -f /usr/lib/softhsm/libsofthsm2.so ] || ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "Installing softhsm2 (Debian's package) for the auto-unseal tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q softhsm2 >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q softhsm2 >/dev/null; }
fi
echo "SoftHSM2 is installed: $(softhsm2-util --version 2>&1 | head -n1)"

# PyJWT with its `cryptography` backend, the independent verifier of the broker's JWTs
# (crates/mayfly-server/tests/it/verify_jwt.py). Installed from PyPI for this python3 if missing.
if ! python3 -c "import jwt, cryptography" >/dev/null 2>&1; then
    echo "Installing PyJWT (pyjwt[crypto]==2.10.1) for python3 with pip"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check 'pyjwt[crypto]==2.10.1' >/dev/null ||
        { echo "pip could not install pyjwt[crypto]==2.10.1" >&2; exit 1; }
fi
echo "PyJWT is installed: $(python3 -c 'import jwt; print(jwt.__version__)')"

# panva's oidc-provider (npm), the real OpenID Provider of the single sign-on tests
# (crates/mayfly-server/tests/oidc/, version pinned by its package-lock.json), run on Node.js.
oidc_dir="$(cd "$(dirname "$0")/.." && pwd)/crates/mayfly-server/tests/oidc"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js and npm are missing (the SSO tests run oidc-provider on Node.js 20+): apt-get install nodejs npm" >&2
    exit 1
fi
if [ ! -d "$oidc_dir/node_modules/oidc-provider" ]; then
    echo "Installing oidc-provider for the SSO tests (npm ci --prefix $oidc_dir)"
    npm ci --prefix "$oidc_dir" --no-audit --no-fund >/dev/null ||
        { echo "npm ci could not install $oidc_dir/package-lock.json" >&2; exit 1; }
fi
echo "oidc-provider is installed: $(node -p "require('$oidc_dir/node_modules/oidc-provider/package.json').version")"

# Headless Chromium (Debian's package) and the console's browser tests' npm packages
# (crates/mayfly-server/tests/console/: playwright-core, axe-core and pg, versions pinned by its
# package-lock.json). playwright-core drives /usr/bin/chromium and downloads no browser.
if [ ! -x /usr/bin/chromium ]; then
    echo "Installing chromium (Debian's package) for the console's browser tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
fi
echo "chromium is installed: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
console_dir="$(cd "$(dirname "$0")/.." && pwd)/crates/mayfly-server/tests/console"
if [ ! -d "$console_dir/node_modules/playwright-core" ] || [ ! -d "$console_dir/node_modules/axe-core" ] ||
    [ ! -d "$console_dir/node_modules/pg" ]; then
    echo "Installing playwright-core, axe-core and pg for the console tests (npm ci --prefix $console_dir)"
    npm ci --prefix "$console_dir" --no-audit --no-fund >/dev/null ||
        { echo "npm ci could not install $console_dir/package-lock.json" >&2; exit 1; }
fi
echo "playwright-core is installed: $(node -p "require('$console_dir/node_modules/playwright-core/package.json').version")"

# The independent MCP clients of the MCP server's tests (crates/mayfly-server/tests/it/mcp.rs):
# the official Python SDK, `mcp` from PyPI, in two venvs — 1.30.0 speaks the 2025-11-25
# `initialize` handshake, 2.3.0 the 2026-07-28 protocol — and the MCP Inspector's CLI from npm
# (crates/mayfly-server/tests/mcp/, version pinned by its package-lock.json).
mcp_venvs="${MAYFLY_MCP_VENVS:-/var/tmp/mayfly-mcp-venvs}"
for pin in 1.30.0 2.3.0; do
    venv="$mcp_venvs/mcp-$pin"
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$pin')" >/dev/null 2>&1; then
        echo "Installing the Python MCP SDK (mcp==$pin) into $venv"
        python3 -m venv "$venv" ||
            { echo "python3 -m venv failed: apt-get install python3-venv" >&2; exit 1; }
        PIP_ROOT_USER_ACTION=ignore "$venv/bin/python" -m pip install -q --disable-pip-version-check "mcp==$pin" >/dev/null ||
            { echo "pip could not install mcp==$pin into $venv" >&2; exit 1; }
    fi
    echo "Python MCP SDK is installed: mcp $pin in $venv"
done
mcp_dir="$(cd "$(dirname "$0")/.." && pwd)/crates/mayfly-server/tests/mcp"
if [ ! -d "$mcp_dir/node_modules/@modelcontextprotocol/inspector" ]; then
    echo "Installing the MCP Inspector for the MCP tests (npm ci --prefix $mcp_dir)"
    npm ci --prefix "$mcp_dir" --no-audit --no-fund >/dev/null ||
        { echo "npm ci could not install $mcp_dir/package-lock.json" >&2; exit 1; }
fi
echo "MCP Inspector is installed: $(node -p "require('$mcp_dir/node_modules/@modelcontextprotocol/inspector/package.json').version")"
