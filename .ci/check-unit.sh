#!/usr/bin/env bash
# Checks systemd/endpoint-copier.service: `systemd-analyze verify` must print nothing (unknown keys
# and bad values are only warnings there, so any output fails), and the offline security review
# must report an overall exposure <= MAX_EXPOSURE (default 1.5). Prints the figure either way.
# Then the drop-ins systemd/rke2-server.service.d/ and systemd/k3s.service.d/: verify must print
# nothing for a stand-in server unit (shaped like RKE2's and K3s's own: Type=notify,
# TimeoutStartSec=0, no TimeoutStopSec=) with the drop-in applied.
#
# verify resolves ExecStart= and the units we order against, so it runs in a throwaway root with
# the host's unit directory and an executable stand-in for /usr/bin/endpoint-copier.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unit="$repo/systemd/endpoint-copier.service"
max_exposure=${MAX_EXPOSURE:-1.5}

if ! command -v systemd-analyze >/dev/null; then
    echo "check-unit: installing systemd for systemd-analyze"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq systemd >/dev/null
fi
systemd-analyze --version | head -n1

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system"
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$dir" ]; then
        cp -r "$dir" "$root/usr/lib/systemd/"
        break
    fi
done
printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/endpoint-copier"
chmod 0755 "$root/usr/bin/endpoint-copier"
cp "$unit" "$root/etc/systemd/system/endpoint-copier.service"

echo "check-unit: systemd-analyze verify"
if ! out=$(systemd-analyze verify --man=no --root="$root" endpoint-copier.service 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    echo "check-unit: FAIL: systemd-analyze verify reported problems in $unit" >&2
    exit 1
fi

for server in rke2-server k3s; do
    dropin="$repo/systemd/$server.service.d/50-endpoint-copier.conf"
    echo "check-unit: systemd-analyze verify $server.service with $dropin"
    printf '[Unit]\nDescription=stand-in for %s\n[Service]\nType=notify\nTimeoutStartSec=0\nExecStart=/usr/bin/endpoint-copier version\n[Install]\nWantedBy=multi-user.target\n' \
        "$server" >"$root/etc/systemd/system/$server.service"
    mkdir -p "$root/usr/lib/systemd/system/$server.service.d"
    cp "$dropin" "$root/usr/lib/systemd/system/$server.service.d/"
    if ! out=$(systemd-analyze verify --man=no --root="$root" "$server.service" 2>&1) || [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        echo "check-unit: FAIL: systemd-analyze verify reported problems in $dropin" >&2
        exit 1
    fi
done

echo "check-unit: systemd-analyze security --offline=yes"
report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || true
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
    printf '%s\n' "$report" >&2
    echo "check-unit: FAIL: no exposure figure in the security report" >&2
    exit 1
fi
echo "check-unit: exposure $exposure (max $max_exposure)"
if awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e > m) }'; then
    printf '%s\n' "$report" | grep '✗' >&2 || true
    echo "check-unit: FAIL: exposure $exposure is above $max_exposure" >&2
    exit 1
fi
echo "check-unit: OK"
