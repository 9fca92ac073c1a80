#!/bin/sh
# Install the system packages the test suite needs, only when they are missing.
# The DNS end-to-end tests run a real PowerDNS Authoritative server (sqlite3 backend);
# the browser tests (tests/browser) drive Debian's Chromium through Playwright, which
# never downloads a browser of its own; the deploy tests check the alerting rules with
# promtool (Debian's prometheus package); the TLS tests need the openssl command.
# Idempotent: a machine that already has them does nothing and succeeds.
set -eu

missing=""
command -v pdns_server >/dev/null 2>&1 || [ -x /usr/sbin/pdns_server ] || missing="$missing pdns-server"
[ -e /usr/lib/x86_64-linux-gnu/pdns/libgsqlite3backend.so ] \
  || ls /usr/lib/*/pdns/libgsqlite3backend.so >/dev/null 2>&1 \
  || missing="$missing pdns-backend-sqlite3"
command -v sqlite3 >/dev/null 2>&1 || missing="$missing sqlite3"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
# The store's TLS tests make their CA and certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"

[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
else
  SUDO=""
fi
echo "ensure-test-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the packages' own services (pdns, prometheus) from starting: the
# tests run their own server on random loopback ports and nothing should listen on :53
# or :9090.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  cleanup_policy=1
else
  cleanup_policy=0
fi
# shellcheck disable=SC2086 - word splitting of the package list is intended
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
if [ "$cleanup_policy" = 1 ]; then
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
