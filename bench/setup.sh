#!/usr/bin/env bash
# Installs what the benchmarks need from Debian: wrk (load), nginx-light (fast
# backends, and a peer), haproxy (a peer), h2load (nghttp2-client: HTTP/2 load).
# Tests never need these.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packages start system services; the benches run their own instances.
for svc in nginx haproxy; do
  command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null || true
  [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
done
echo "bench tools: $(wrk --version 2>&1 | head -1); $(nginx -v 2>&1); $(haproxy -v | head -1); $(h2load --version | head -1)"
