#!/usr/bin/env bash
# Builds the endpoint-copier RPM around the static binary that `cargo dist` (x86_64) or
# `cargo dist-aarch64` produced, with the plain rpmbuild of Debian 12 (`apt-get install rpm`) or
# of any RPM distribution. Nothing is compiled here: this is spec mode (b), see
# packaging/endpoint-copier.spec. The RPM's arch is the binary's (read from its ELF header); a
# binary for another arch than this host's is run under qemu user emulation for the man pages,
# the completions and %check (`apt-get install qemu-user-static`).
#
# Usage: packaging/build-rpm.sh
# Environment (all optional):
#   ENDPOINT_COPIER_ARCH    x86_64 (default) or aarch64: picks the default binary, and must
#                           match the binary's own arch when both are given
#   ENDPOINT_COPIER_BINARY  static binary to package
#                           (default: ${CARGO_TARGET_DIR:-target}/<arch>-unknown-linux-gnu/release/endpoint-copier)
#   SOURCE_DIR              checkout that holds the unit, defaults, docs and LICENSE (default: this repository)
#   OUT_DIR                 where the .rpm is written (default: dist/ in this repository)
# Prints the path of the RPM on its last line of stdout.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
arch=${ENDPOINT_COPIER_ARCH:-}
binary=${ENDPOINT_COPIER_BINARY:-$target_dir/${arch:-x86_64}-unknown-linux-gnu/release/endpoint-copier}
source_dir=${SOURCE_DIR:-$repo}
out_dir=${OUT_DIR:-$repo/dist}
spec=$repo/packaging/endpoint-copier.spec

log() { printf 'build-rpm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# elf_arch FILE: the arch an ELF executable is for, by its e_machine field (bytes 18-19,
# little-endian), as `uname -m` and rpm name it; `not-elf` or `unknown-<number>` otherwise.
elf_arch() {
  local magic machine
  magic=$(od -An -tx1 -N4 "$1" | tr -d ' \n')
  [[ $magic == 7f454c46 ]] || { echo not-elf; return; }
  machine=$(od -An -tu2 -j18 -N2 --endian=little "$1" | tr -d ' \n')
  case $machine in
    62) echo x86_64 ;;
    183) echo aarch64 ;;
    *) echo "unknown-$machine" ;;
  esac
}

command -v rpmbuild >/dev/null 2>&1 || die "rpmbuild not found (Debian/Ubuntu: apt-get install rpm)"
[[ -f $binary ]] || die "no binary at '$binary' (build it with: cargo dist, or cargo dist-aarch64)"
binary_arch=$(elf_arch "$binary")
case $binary_arch in
  x86_64 | aarch64) ;;
  *) die "'$binary' is not an x86_64 or aarch64 executable ($binary_arch); the spec builds only those" ;;
esac
[[ -z $arch || $arch == "$binary_arch" ]] \
  || die "ENDPOINT_COPIER_ARCH is $arch but '$binary' is an $binary_arch executable"
arch=$binary_arch
# The binary runs at build time (man pages, completions, %check): natively, or under qemu.
runner=""
runner_define=()
if [[ $arch != "$(uname -m)" ]]; then
  runner=qemu-$arch-static
  command -v "$runner" >/dev/null 2>&1 \
    || die "'$binary' is for $arch and this host is $(uname -m): $runner is needed to run it (apt-get install qemu-user-static)"
  runner_define=(--define "prebuilt_runner $runner")
fi
# rpmbuild resolves %{prebuilt_binary} and %{source_dir} from its own working directory,
# so hand it absolute paths.
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
source_dir=$(cd "$source_dir" && pwd)
for f in LICENSE README.md CHANGELOG.md systemd/endpoint-copier.service \
         systemd/rke2-server.service.d/50-endpoint-copier.conf \
         systemd/k3s.service.d/50-endpoint-copier.conf \
         packaging/config.d/10-defaults.toml docs/usage packaging/monitoring; do
  [[ -e $source_dir/$f ]] || die "'$source_dir/$f' is missing (the RPM ships it)"
done

# A private _topdir: no ~/rpmbuild side effects, and parallel runs do not collide.
topdir=$(mktemp -d "${TMPDIR:-/tmp}/endpoint-copier-rpm.XXXXXX")
trap 'rm -rf "$topdir"' EXIT

log "packaging $binary ($arch${runner:+, run with $runner})"
# --target: the RPM's arch is the binary's, whatever this host is.
# _build_name_fmt: write the RPM flat into RPMS/, without the per-arch subfolder.
# _defaultdocdir/_docdir_fmt: SUSE's doc layout (/usr/share/doc/packages/endpoint-copier), because
# this RPM is installed on SL Micro, not on the Debian host that builds it.
rpmbuild -bb \
  --target "$arch" \
  --define "_topdir $topdir" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "_defaultdocdir /usr/share/doc/packages" \
  --define "_docdir_fmt %%{NAME}" \
  --define "prebuilt_binary $binary" \
  --define "source_dir $source_dir" \
  "${runner_define[@]}" \
  "$spec" >&2

mkdir -p "$out_dir"
shopt -s nullglob
rpms=("$topdir"/RPMS/*.rpm)
[[ ${#rpms[@]} -eq 1 ]] || die "expected one RPM in $topdir/RPMS, found ${#rpms[@]}"
cp -f "${rpms[0]}" "$out_dir/"
out=$(cd "$out_dir" && pwd)/$(basename "${rpms[0]}")
log "wrote $out"
printf '%s\n' "$out"
