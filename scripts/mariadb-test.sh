#!/usr/bin/env bash
# A throw-away MariaDB for the replay/archive tests (no systemd, loopback only).
#   scripts/mariadb-test.sh start PORT DIR   # data dir DIR, socket DIR/mysqld.sock
#   scripts/mariadb-test.sh stop  PORT DIR
# Prints nothing on success; exports nothing. After `start`, tests use
#   DANMAKU_TEST_MYSQL_URL=mysql://root@127.0.0.1:PORT/danmaku_test
# (the database is created here; grants are skipped: test use only).
set -euo pipefail
cmd=${1:?start|stop}; port=${2:?PORT}; dir=${3:?DIR}
sock="$dir/mysqld.sock"
case "$cmd" in
start)
  mkdir -p "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    mysql_install_db --user="$(id -un)" --datadir="$dir/data" --auth-root-authentication-method=normal \
      >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; exit 1; }
  fi
  nohup mariadbd --no-defaults --user="$(id -un)" --datadir="$dir/data" --port="$port" \
    --bind-address=127.0.0.1 --socket="$sock" --pid-file="$dir/mysqld.pid" \
    --skip-grant-tables --skip-name-resolve --innodb-buffer-pool-size=64M \
    --innodb-flush-log-at-trx-commit=2 --log-error="$dir/mysqld.err" >/dev/null 2>&1 &
  for _ in $(seq 1 300); do
    if mariadb --no-defaults -uroot -h127.0.0.1 -P"$port" --protocol=tcp \
         -e 'CREATE DATABASE IF NOT EXISTS danmaku_test' >/dev/null 2>&1; then
      exit 0
    fi
    sleep 0.1
  done
  echo "mariadb did not start on port $port (see $dir/mysqld.err)" >&2
  exit 1
  ;;
stop)
  if [ -f "$dir/mysqld.pid" ]; then
    pid=$(cat "$dir/mysqld.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    echo "mariadb (pid $pid) did not stop" >&2
    exit 1
  fi
  ;;
*) echo "usage: $0 start|stop PORT DIR" >&2; exit 2 ;;
esac
