#!/usr/bin/env bash
# Stages the combustion route into an EIB image-definition folder: the custom script and the
# files it installs, in the names it expects. Run at image build time, before `eib build`.
#
# Usage: combustion/stage.sh EIB_DIR [SITE_TOML]
#   EIB_DIR    the folder holding the EIB definition file (custom/ is created inside it)
#   SITE_TOML  optional site drop-in; the node gets it as /etc/endpoint-copier/config.d/50-site.toml
# Environment (optional):
#   ENDPOINT_COPIER_ARCH    the image's arch, x86_64 (default) or aarch64: picks the binary that
#                           `cargo dist` or `cargo dist-aarch64` built
#   ENDPOINT_COPIER_BINARY  static binary (default: ${CARGO_TARGET_DIR:-target}/<arch>-unknown-linux-gnu/release/endpoint-copier)
#   SOURCE_DIR              checkout holding systemd/ and packaging/config.d/ (default: this repository);
#                           its systemd/rke2-server.service.d/ and systemd/k3s.service.d/ drop-ins
#                           (the drain/resume hooks) are staged when it has them
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source_dir=${SOURCE_DIR:-$repo}
arch=${ENDPOINT_COPIER_ARCH:-x86_64}
binary=${ENDPOINT_COPIER_BINARY:-${CARGO_TARGET_DIR:-$repo/target}/$arch-unknown-linux-gnu/release/endpoint-copier}

log() { printf 'stage: %s\n' "$*"; }
die() { printf 'stage: error: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: combustion/stage.sh EIB_DIR [SITE_TOML]"
eib_dir=$1
site=${2:-}
[[ -d $eib_dir ]] || die "EIB definition folder '$eib_dir' does not exist"
case $arch in
  x86_64 | aarch64) ;;
  *) die "ENDPOINT_COPIER_ARCH='$arch' is not x86_64 or aarch64" ;;
esac
[[ -f $binary ]] || die "no binary at '$binary' (build it with: cargo dist, or cargo dist-aarch64 for aarch64)"
unit=$source_dir/systemd/endpoint-copier.service
defaults=$source_dir/packaging/config.d/10-defaults.toml
[[ -f $unit ]] || die "'$unit' is missing"
[[ -f $defaults ]] || die "'$defaults' is missing"
[[ -z $site || -f $site ]] || die "site drop-in '$site' does not exist"

scripts=$eib_dir/custom/scripts
files=$eib_dir/custom/files
mkdir -p "$scripts" "$files"
install -m 0755 "$repo/combustion/custom/scripts/25-endpoint-copier.sh" "$scripts/25-endpoint-copier.sh"
log "wrote $scripts/25-endpoint-copier.sh"
# EIB copies custom/files/ flat into the combustion folder next to every other component's
# files, hence the endpoint-copier prefix on each name.
install -m 0755 "$binary" "$files/endpoint-copier"
install -m 0644 "$unit" "$files/endpoint-copier.service"
install -m 0644 "$defaults" "$files/endpoint-copier-10-defaults.toml"
log "wrote $files/endpoint-copier, endpoint-copier.service, endpoint-copier-10-defaults.toml"
# The script on the node refuses an executable for another arch than the node's; say here which
# one was staged (`file` names it, when it is installed).
if command -v file >/dev/null 2>&1; then
  log "staged binary: $(file -b "$binary" | cut -d, -f1-2)"
fi
# The drain/resume hooks, flat like the rest: endpoint-copier-<server>.conf.
for server in rke2-server k3s; do
  dropin=$source_dir/systemd/$server.service.d/50-endpoint-copier.conf
  if [[ -f $dropin ]]; then
    install -m 0644 "$dropin" "$files/endpoint-copier-$server.conf"
    log "wrote $files/endpoint-copier-$server.conf"
  elif [[ -e $files/endpoint-copier-$server.conf ]]; then
    rm -f "$files/endpoint-copier-$server.conf"
    log "removed stale $files/endpoint-copier-$server.conf"
  fi
done
if [[ -n $site ]]; then
  install -m 0644 "$site" "$files/endpoint-copier-50-site.toml"
  log "wrote $files/endpoint-copier-50-site.toml"
elif [[ -e $files/endpoint-copier-50-site.toml ]]; then
  # A stale site drop-in from an earlier staging would silently reach the node.
  rm -f "$files/endpoint-copier-50-site.toml"
  log "removed stale $files/endpoint-copier-50-site.toml"
fi
