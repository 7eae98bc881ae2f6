#!/usr/bin/env bash
# Runs a bench in its own scheduling group at nice -20, so that other sessions
# on a shared machine take little of its CPU: with autogroup scheduling
# (Debian's default) a plain `nice` only ranks processes within one session.
# Needs root (or CAP_SYS_NICE) for the negative nice; otherwise it runs the
# command as it is and says so.
#   bash test/bench/hiprio.sh node test/bench/import.mjs --gb 2
exec setsid bash -c '
  if ! echo -20 2>/dev/null > /proc/self/autogroup; then
    echo "hiprio: cannot raise the priority (not root?); running at normal priority" >&2
  fi
  exec "$@"' hiprio "$@"
