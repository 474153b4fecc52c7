#!/usr/bin/env bash
# PostgreSQL (127.0.0.1:5432) and NATS with JetStream (127.0.0.1:4222) for the scale-out tests: used as they
# are when they answer, else installed from Debian's packages and started. The tests connect as
# `postgres://root@127.0.0.1:5432/test` (CONFAB_TEST_POSTGRES_URL) and `nats://127.0.0.1:4222`
# (CONFAB_TEST_NATS_URL), each in a schema and a subject prefix of its own.
#
#   scripts/services.sh     # needs root only when something must be installed or started
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
    [ "$(id -u)" = 0 ] || { echo "cannot install $* (not root)"; return 1; }
    { apt-get install -y -qq "$@" || { apt-get update -qq && apt-get install -y -qq "$@"; }; } >/dev/null
}

wait_for() { # port, what
    for _ in $(seq 1 100); do
        listening "$1" && return 0
        sleep 0.1
    done
    echo "$2 did not start listening on 127.0.0.1:$1"
    return 1
}

if listening 5432; then
    echo "PostgreSQL: answering on 127.0.0.1:5432"
else
    echo "PostgreSQL: not running; installing and starting Debian's package"
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    [ -d "/etc/postgresql/$version/main" ] || pg_createcluster "$version" main >/dev/null
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    # A throw-away test server: loopback connections are trusted, as on the project's machines.
    grep -q "confab-tests" "$hba" || sed -i "1i host all all 127.0.0.1/32 trust # confab-tests" "$hba"
    pg_ctlcluster "$version" main start || pg_ctlcluster "$version" main restart
    wait_for 5432 PostgreSQL
fi
psql_root() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
[ "$(psql_root -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'root'")" = 1 ] ||
    psql_root -d postgres -c "CREATE ROLE root SUPERUSER LOGIN"
[ "$(psql_root -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'test'")" = 1 ] ||
    psql_root -d postgres -c "CREATE DATABASE test OWNER root"

if listening 4222; then
    echo "NATS: answering on 127.0.0.1:4222"
else
    echo "NATS: not running; installing and starting Debian's package"
    command -v nats-server >/dev/null || apt_install nats-server
    store=$(mktemp -d /tmp/confab-nats.XXXXXX)
    setsid nats-server -js -a 127.0.0.1 -p 4222 -sd "$store" >"$store/server.log" 2>&1 < /dev/null &
    wait_for 4222 nats-server
fi
