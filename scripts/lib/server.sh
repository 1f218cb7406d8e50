# Starting a real danmaku server for a script's tests (sourced, not run):
# clients/js/test.sh, tests/browser/run.sh, deploy/check.sh and
# scripts/schemathesis.sh drive one the same way.
#
#   danmaku_free_port                  prints a loopback port free a moment ago
#   danmaku_start BIN PORT LOG [VAR=value ...]
#                                      `BIN serve` on 127.0.0.1:PORT with the
#                                      embedded defaults: an empty config file in
#                                      its own directory (also its working
#                                      directory), none of the caller's DANMAKU_*
#                                      variables, then VAR=value ones; output to
#                                      LOG. Returns once the port answers; fails
#                                      (with the log) if the server exits or does
#                                      not open the port within 20 s.
#   danmaku_stop                       stops it (call it from the EXIT trap).

danmaku_server_pid=""
danmaku_server_dir=""

danmaku_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

danmaku_start() {
  local bin="$1" port="$2" log="$3"
  shift 3
  if [ ! -x "$bin" ]; then
    echo "no server binary at $bin: run \`cargo build --bin danmaku\` or set DANMAKU_BIN" >&2
    return 1
  fi
  danmaku_server_dir="$(mktemp -d /tmp/danmaku-server.XXXXXX)"
  : >"$danmaku_server_dir/config.toml"
  (
    for v in $(compgen -e | grep '^DANMAKU_' || true); do unset "$v"; done
    for assignment in "$@"; do export "${assignment?}"; done
    cd "$danmaku_server_dir"
    exec "$bin" serve --config "$danmaku_server_dir/config.toml" --listen "127.0.0.1:$port"
  ) >"$log" 2>&1 &
  danmaku_server_pid=$!
  local _
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$danmaku_server_pid" 2>/dev/null; then
      echo "the server exited; log ($log):" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the server did not open 127.0.0.1:$port within 20 s; log ($log):" >&2
  cat "$log" >&2
  return 1
}

danmaku_stop() {
  if [ -n "$danmaku_server_pid" ]; then
    kill "$danmaku_server_pid" 2>/dev/null || true
    wait "$danmaku_server_pid" 2>/dev/null || true
    danmaku_server_pid=""
  fi
  if [ -n "$danmaku_server_dir" ]; then
    rm -rf "$danmaku_server_dir"
    danmaku_server_dir=""
  fi
}
