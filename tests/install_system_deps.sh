#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing:
# chromium (browser journeys in tests/e2e) and postgresql (the PostgreSQL store and multi-host tests).
# Runs as root on CI and developer machines; elsewhere it says what is missing and carries on
# (those tests then skip with a message naming the package).
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: missing ${need[*]} and cannot apt-get here; their tests will be skipped" >&2
  exit 0
fi
echo "install_system_deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "install_system_deps: apt-get failed for ${need[*]}; their tests will be skipped" >&2
exit 0
