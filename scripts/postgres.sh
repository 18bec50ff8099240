#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests of the human form (`make test` and CI use it).
#
#   scripts/postgres.sh run CMD [ARG...]
#
# creates its own cluster in a new temporary folder (initdb; password authentication with a random password; the
# UTF8 encoding and the C locale), starts it on 127.0.0.1 at a free port with its socket in that folder (so it never
# collides with a system server on 5432), runs CMD with
#   LOGITPRED_TEST_POSTGRES_URL=postgresql+psycopg://logitpred:<password>@127.0.0.1:<port>/postgres
# in its environment, then stops the server (pg_ctl stop -m fast) and deletes the folder whatever CMD did, and
# exits with CMD's status. The tests make a fresh database per test on it (tests/conftest.py, fixture human_db_url).
# fsync and synchronous_commit keep PostgreSQL's defaults (on): a commit is on disk before the server reports it.
#
# Needs PostgreSQL's server programs: Debian's `postgresql` package (`make postgres` installs it), found under
# /usr/lib/postgresql/<newest>/bin, or $PG_BINDIR, or initdb on PATH. As root, the cluster is owned by and the server
# runs as the `postgres` user (PostgreSQL refuses to run as root); otherwise as the calling user.
set -euo pipefail

usage() { echo "usage: $0 run CMD [ARG...]" >&2; exit 2; }
[[ $# -ge 2 && $1 == run ]] || usage
shift

bindir=${PG_BINDIR:-}
if [[ -z $bindir ]]; then
  bindir=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)  # newest server, not client
  bindir=${bindir%/initdb}
fi
if [[ -z $bindir ]] && command -v initdb >/dev/null 2>&1; then
  bindir=$(dirname "$(command -v initdb)")
fi
if [[ -z $bindir || ! -x $bindir/initdb || ! -x $bindir/pg_ctl ]]; then
  echo "postgres.sh: PostgreSQL's initdb and pg_ctl not found: install Debian's postgresql (make postgres) or set PG_BINDIR" >&2
  exit 1
fi

as_owner=()
if [[ $(id -u) -eq 0 ]]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "postgres.sh: running as root but there is no 'postgres' user to run the server as" >&2
    exit 1
  fi
  as_owner=(runuser -u postgres --)
fi

base=${TMPDIR:-/tmp}
if [[ ${#as_owner[@]} -gt 0 ]] && ! "${as_owner[@]}" test -x "$base"; then base=/tmp; fi  # postgres must reach it
dir=$(mktemp -d "$base/logitpred-pg.XXXXXX")
started=0
cleanup() {
  local rc=$?
  if [[ $started -eq 1 ]] && kill -0 "$server" 2>/dev/null; then
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null ||
      echo "postgres.sh: pg_ctl stop failed; server log: $dir/log" >&2
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=${EPOCHREALTIME/./}
password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
chmod 700 "$dir"
(umask 077 && printf '%s\n' "$password" >"$dir/pw")
[[ ${#as_owner[@]} -eq 0 ]] || chown postgres: "$dir" "$dir/pw"
# -N: initdb skips its final fsync of a cluster that lives for one test run; the running server still fsyncs commits.
if ! "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U logitpred --pwfile="$dir/pw" -A scram-sha-256 -E UTF8 \
    --no-locale -N >"$dir/initdb.log" 2>&1; then
  cat "$dir/initdb.log" >&2
  exit 1
fi
rm -f "$dir/pw"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The server runs as this script's child (not daemonized by pg_ctl start), so this script reaps it when it stops.
for attempt in 1 2 3 4 5; do  # another program may take the port between the probe and the start: try another
  port=$(free_port)
  "${as_owner[@]}" "$bindir/postgres" -D "$dir/data" -c listen_addresses=127.0.0.1 -p "$port" -k "$dir" \
    >>"$dir/log" 2>&1 &
  server=$!
  for _ in $(seq 600); do  # up to 60 s
    if ! kill -0 "$server" 2>/dev/null; then wait "$server" || true; server=; break; fi
    if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then started=1; break 2; fi
    sleep 0.1
  done
  [[ -z $server ]] || { kill "$server"; wait "$server" || true; }
done
if [[ $started -ne 1 ]]; then
  echo "postgres.sh: the server did not start; its log:" >&2
  cat "$dir/log" >&2 || true
  exit 1
fi
version=$("$bindir/postgres" --version)
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
printf 'postgres.sh: %s on 127.0.0.1:%s (cluster in %s), initdb + start took %d.%03d s\n' "$version" "$port" "$dir" \
  $((ms / 1000)) $((ms % 1000)) >&2

export LOGITPRED_TEST_POSTGRES_URL="postgresql+psycopg://logitpred:$password@127.0.0.1:$port/postgres"
"$@"
