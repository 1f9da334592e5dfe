#!/usr/bin/env bash
# Builds the endpoint-copier RPM around the static binary that `cargo dist` produced, with the
# plain rpmbuild of Debian 12 (`apt-get install rpm`) or of any RPM distribution. Nothing is
# compiled here: this is spec mode (b), see packaging/endpoint-copier.spec.
#
# Usage: packaging/build-rpm.sh
# Environment (all optional):
#   ENDPOINT_COPIER_BINARY  static binary to package
#                           (default: ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/endpoint-copier)
#   SOURCE_DIR              checkout that holds the unit, defaults, docs and LICENSE (default: this repository)
#   OUT_DIR                 where the .rpm is written (default: dist/ in this repository)
# Prints the path of the RPM on its last line of stdout.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
binary=${ENDPOINT_COPIER_BINARY:-$target_dir/x86_64-unknown-linux-gnu/release/endpoint-copier}
source_dir=${SOURCE_DIR:-$repo}
out_dir=${OUT_DIR:-$repo/dist}
spec=$repo/packaging/endpoint-copier.spec

log() { printf 'build-rpm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v rpmbuild >/dev/null 2>&1 || die "rpmbuild not found (Debian/Ubuntu: apt-get install rpm)"
[[ -f $binary ]] || die "no binary at '$binary' (build it with: cargo dist)"
# rpmbuild resolves %{prebuilt_binary} and %{source_dir} from its own working directory,
# so hand it absolute paths.
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
source_dir=$(cd "$source_dir" && pwd)
for f in LICENSE README.md CHANGELOG.md systemd/endpoint-copier.service \
         systemd/rke2-server.service.d/50-endpoint-copier.conf \
         systemd/k3s.service.d/50-endpoint-copier.conf \
         packaging/config.d/10-defaults.toml docs/usage; do
  [[ -e $source_dir/$f ]] || die "'$source_dir/$f' is missing (the RPM ships it)"
done

# A private _topdir: no ~/rpmbuild side effects, and parallel runs do not collide.
topdir=$(mktemp -d "${TMPDIR:-/tmp}/endpoint-copier-rpm.XXXXXX")
trap 'rm -rf "$topdir"' EXIT

log "packaging $binary"
# --target x86_64: the spec is ExclusiveArch x86_64 and the binary is x86_64 whatever the host says.
# _build_name_fmt: write the RPM flat into RPMS/, without the per-arch subfolder.
# _defaultdocdir/_docdir_fmt: SUSE's doc layout (/usr/share/doc/packages/endpoint-copier), because
# this RPM is installed on SL Micro, not on the Debian host that builds it.
rpmbuild -bb \
  --target x86_64 \
  --define "_topdir $topdir" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "_defaultdocdir /usr/share/doc/packages" \
  --define "_docdir_fmt %%{NAME}" \
  --define "prebuilt_binary $binary" \
  --define "source_dir $source_dir" \
  "$spec" >&2

mkdir -p "$out_dir"
shopt -s nullglob
rpms=("$topdir"/RPMS/*.rpm)
[[ ${#rpms[@]} -eq 1 ]] || die "expected one RPM in $topdir/RPMS, found ${#rpms[@]}"
cp -f "${rpms[0]}" "$out_dir/"
out=$(cd "$out_dir" && pwd)/$(basename "${rpms[0]}")
log "wrote $out"
printf '%s\n' "$out"
