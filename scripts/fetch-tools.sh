#!/usr/bin/env bash
# Unpack the Debian packages the tests run for real (Prometheus, promtool) into a private folder.
# `apt-get download` + `dpkg-deb -x` needs no root and starts no service; as root on a machine
# whose package lists are empty, the lists are fetched first.
set -euo pipefail
dest=${1:-.tools}
packages=(prometheus)
mkdir -p "$dest/debs" "$dest/root" "$dest/bin"
dest=$(cd "$dest" && pwd)

if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
  else
    echo "fetch-tools: apt package lists are empty; run 'apt-get update' as root first" >&2
    exit 1
  fi
fi

cd "$dest/debs"
for pkg in "${packages[@]}"; do
  ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download -qq "$pkg"
done
for deb in *.deb; do
  dpkg-deb -x "$deb" "$dest/root"
done
for tool in prometheus promtool; do
  ln -sf "$dest/root/usr/bin/$tool" "$dest/bin/$tool"
done
"$dest/bin/prometheus" --version 2>&1 | head -1
