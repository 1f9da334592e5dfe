#!/usr/bin/env bash
# Packaging checks, called by .ci/run: the static release binary, the RPM built around it (its
# files, man pages and completions included), and the combustion installer. Prints each check as
# it goes; exits non-zero at the first failure, naming what failed.
#
# ENDPOINT_COPIER_ARCH=x86_64 (default) or aarch64 picks the binary .ci/run built, with `cargo
# dist` at ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/endpoint-copier or with
# `cargo dist-aarch64` at .../aarch64-unknown-linux-gnu/release/endpoint-copier (or
# $ENDPOINT_COPIER_BINARY); builds it if it is missing. A binary for another arch than this
# host's runs under qemu-<arch>-static. The RPM is left in ${CARGO_TARGET_DIR:-target}/rpms/ for
# .ci/rpmlint.sh. Installs rpm, cpio, file and man with apt-get only if they are missing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
arch=${ENDPOINT_COPIER_ARCH:-x86_64}
case $arch in
  x86_64) dist_alias=dist file_machine="x86-64" ;;
  aarch64) dist_alias=dist-aarch64 file_machine="ARM aarch64" ;;
  *) printf 'ENDPOINT_COPIER_ARCH=%s is not x86_64 or aarch64\n' "$arch" >&2; exit 1 ;;
esac
# ENDPOINT_COPIER_BINARY checks another binary (same variable as packaging/build-rpm.sh).
binary=${ENDPOINT_COPIER_BINARY:-$target_dir/$arch-unknown-linux-gnu/release/endpoint-copier}
rpm_dir=$target_dir/rpms
# run BINARY ARGS...: natively, or under qemu when the binary is for another arch.
run() {
  if [[ $arch == "$(uname -m)" ]]; then "$@"; else "qemu-$arch-static" "$@"; fi
}
# 15 MiB: the budget issue #6 sets for the release binary.
max_bytes=$((15 * 1024 * 1024))

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() { printf '    FAIL: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-packaging.XXXXXX")
trap 'rm -rf "$work"' EXIT

step "tools"
missing=()
command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
command -v rpm2cpio >/dev/null 2>&1 || missing+=(rpm)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v file >/dev/null 2>&1 || missing+=(file)
command -v man >/dev/null 2>&1 || missing+=(man-db)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
if [[ $arch != "$(uname -m)" ]]; then
  command -v "qemu-$arch-static" >/dev/null 2>&1 || missing+=(qemu-user-static)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install them"
  printf '    installing %s\n' "${missing[*]}"
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
    || fail "apt-get install ${missing[*]} failed"
fi
ok "rpmbuild, rpm2cpio, cpio, file, man, readelf present; checking $arch"

step "versions agree: Cargo.toml and packaging/endpoint-copier.spec"
cargo_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
spec_version=$(sed -n 's/^Version:[[:space:]]*//p' packaging/endpoint-copier.spec)
[[ -n $cargo_version ]] || fail "no version in Cargo.toml"
[[ $cargo_version == "$spec_version" ]] \
  || fail "Cargo.toml says $cargo_version, packaging/endpoint-copier.spec says '$spec_version'"
ok "$cargo_version"

step "spec is arch-neutral: rpmspec -P --target $arch"
# What OBS builds natively on $arch (spec mode a): the Rust triple of that arch, and that arch
# allowed. rpmspec parses without building, so it works for any arch on this host.
rpmspec -P --target "$arch" packaging/endpoint-copier.spec >"$work/spec-$arch" 2>"$work/rpmspec.log" \
  || { cat "$work/rpmspec.log" >&2; fail "rpmspec -P --target $arch failed"; }
grep -qE "^ExclusiveArch:.*[[:space:]]$arch([[:space:]]|\$)" "$work/spec-$arch" \
  || fail "the spec's ExclusiveArch does not include $arch"
grep -q -- "--target $arch-unknown-linux-gnu" "$work/spec-$arch" \
  || fail "the spec does not build for $arch-unknown-linux-gnu on $arch"
grep -q -- "target/$arch-unknown-linux-gnu/release/endpoint-copier" "$work/spec-$arch" \
  || fail "the spec does not package target/$arch-unknown-linux-gnu/release/endpoint-copier on $arch"
ok "ExclusiveArch has $arch; %build builds and installs $arch-unknown-linux-gnu"

step "static release binary: $binary"
if [[ ! -f $binary ]]; then
  printf '    not built yet; running cargo %s\n' "$dist_alias"
  cargo "$dist_alias"
fi
file_out=$(file -b "$binary")
printf '    file: %s\n' "$file_out"
[[ $file_out == *"$file_machine"* ]] || fail "$binary is not an $arch executable"
ok "$arch executable"
[[ $file_out == *"static-pie linked"* || $file_out == *"statically linked"* ]] \
  || fail "$binary is not statically linked"
ok "statically linked"
# No program interpreter and no NEEDED library: readelf reads any arch's ELF, so this holds for
# a cross-built binary too, where ldd cannot tell.
if readelf -lW "$binary" | grep -q 'Requesting program interpreter'; then
  fail "$binary asks for a program interpreter (dynamic loader)"
fi
if readelf -dW "$binary" | grep -q '(NEEDED)'; then
  readelf -dW "$binary" | grep '(NEEDED)' >&2
  fail "$binary needs shared libraries"
fi
ok "no interpreter, no NEEDED shared library (readelf)"
if [[ $arch == "$(uname -m)" ]]; then
  # glibc's ldd says "statically linked" for static-pie and "not a dynamic executable" for static
  # non-PIE binaries; anything naming a .so means it is dynamic.
  ldd_out=$(ldd "$binary" 2>&1 || true)
  printf '    ldd: %s\n' "$ldd_out"
  [[ $ldd_out == *"statically linked"* || $ldd_out == *"not a dynamic executable"* ]] \
    || fail "ldd lists shared libraries for $binary"
  ok "no shared libraries (ldd)"
fi
[[ $file_out == *", stripped"* ]] || fail "$binary is not stripped (Cargo.toml [profile.release] strip)"
ok "stripped"
size=$(stat -c %s "$binary")
((size <= max_bytes)) || fail "$binary is $size bytes, over the budget of $max_bytes"
ok "$size bytes <= $max_bytes"
version_out=$(run "$binary" version) || fail "'$binary version' exited with $?"
printf '    version: %s\n' "$version_out"
version_re="^endpoint-copier ${cargo_version//./\\.} \\(commit ([0-9a-f]{7,64}|unknown), rustc [0-9]+\\.[0-9]+\\.[0-9]+.*\\)$"
[[ $version_out =~ $version_re ]] \
  || fail "'endpoint-copier version' printed '$version_out', expected 'endpoint-copier $cargo_version (commit <sha>, rustc <version> ...)'"
ok "version line names the version, commit and rustc"

step "RPM: packaging/build-rpm.sh"
mkdir -p "$rpm_dir"
rm -f "$rpm_dir"/endpoint-copier-*."$arch".rpm
rpm_file=$(OUT_DIR=$rpm_dir ENDPOINT_COPIER_ARCH=$arch ENDPOINT_COPIER_BINARY=$binary packaging/build-rpm.sh 2>"$work/build-rpm.log" | tail -n1) \
  || { cat "$work/build-rpm.log" >&2; fail "packaging/build-rpm.sh failed"; }
[[ -f $rpm_file ]] || { cat "$work/build-rpm.log" >&2; fail "packaging/build-rpm.sh wrote no RPM"; }
rpm_arch=$(rpm -qp --qf '%{ARCH}' "$rpm_file")
[[ $rpm_arch == "$arch" ]] || fail "$(basename "$rpm_file") is for $rpm_arch, not $arch"
ok "$(basename "$rpm_file") (arch $rpm_arch)"

step "RPM file list is exactly the expected one"
# The pages the binary writes (names only; their contents are unit-tested in src/cli/generate.rs).
run "$binary" generate man "$work/man" >/dev/null || fail "'$binary generate man' failed"
mapfile -t man_pages < <(cd "$work/man" && ls -1 -- *.1)
[[ ${#man_pages[@]} -ge 2 ]] || fail "'$binary generate man' wrote ${#man_pages[@]} page(s)"
docdir=/usr/share/doc/packages/endpoint-copier
{
  printf '%s\n' \
    /etc/endpoint-copier \
    /etc/endpoint-copier/config.d \
    /usr/bin/endpoint-copier \
    /usr/lib/endpoint-copier \
    /usr/lib/endpoint-copier/config.d \
    /usr/lib/endpoint-copier/config.d/10-defaults.toml \
    /usr/lib/systemd/system/endpoint-copier.service \
    /usr/lib/systemd/system/k3s.service.d \
    /usr/lib/systemd/system/k3s.service.d/50-endpoint-copier.conf \
    /usr/lib/systemd/system/rke2-server.service.d \
    /usr/lib/systemd/system/rke2-server.service.d/50-endpoint-copier.conf \
    /usr/share/licenses/endpoint-copier \
    /usr/share/licenses/endpoint-copier/LICENSE \
    "$docdir" \
    "$docdir/README.md" \
    "$docdir/CHANGELOG.md"
  # docs/usage is shipped whole; every file and folder in it, under $docdir/usage.
  (cd docs && find usage | sed "s|^|$docdir/|")
  # So are the RBAC manifests and the monitoring files, under $docdir/rbac and $docdir/monitoring.
  (cd packaging && find rbac monitoring | sed "s|^|$docdir/|")
  # One man page per command, as the binary writes them, gzipped.
  for page in "${man_pages[@]}"; do printf '/usr/share/man/man1/%s.gz\n' "$page"; done
  # The completions, in folders the package owns (it requires no shell).
  printf '%s\n' \
    /usr/share/bash-completion \
    /usr/share/bash-completion/completions \
    /usr/share/bash-completion/completions/endpoint-copier \
    /usr/share/zsh \
    /usr/share/zsh/site-functions \
    /usr/share/zsh/site-functions/_endpoint-copier \
    /usr/share/fish \
    /usr/share/fish/vendor_completions.d \
    /usr/share/fish/vendor_completions.d/endpoint-copier.fish
} | LC_ALL=C sort >"$work/expected-files"
rpm -qlp "$rpm_file" | LC_ALL=C sort >"$work/actual-files"
if ! diff -u "$work/expected-files" "$work/actual-files" >"$work/files.diff"; then
  cat "$work/files.diff" >&2
  fail "RPM file list differs (- expected, + in the RPM)"
fi
ok "$(wc -l <"$work/actual-files") entries"

step "RPM file modes"
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm_file" >"$work/modes"
grep -qx -- '-rwxr-xr-x /usr/bin/endpoint-copier' "$work/modes" || fail "/usr/bin/endpoint-copier is not 0755"
grep -qx -- '-rw-r--r-- /usr/lib/systemd/system/endpoint-copier.service' "$work/modes" || fail "the unit is not 0644"
grep -qx -- '-rw-r--r-- /usr/lib/endpoint-copier/config.d/10-defaults.toml' "$work/modes" || fail "10-defaults.toml is not 0644"
grep -qx -- 'drwxr-xr-x /etc/endpoint-copier/config.d' "$work/modes" || fail "/etc/endpoint-copier/config.d is not a 0755 directory"
for server in rke2-server k3s; do
  grep -qx -- "-rw-r--r-- /usr/lib/systemd/system/$server.service.d/50-endpoint-copier.conf" "$work/modes" \
    || fail "the $server.service drop-in is not 0644"
done
ok "binary 0755, unit, drop-ins and defaults 0644, admin folder 0755"

step "RPM scriptlets: no unexpanded macro, never enable on install"
rpm -qp --scripts "$rpm_file" >"$work/scripts"
sed 's/^/    | /' "$work/scripts"
if grep -nE '%[{(]|%[A-Za-z_][A-Za-z0-9_]*' "$work/scripts" >"$work/macros"; then
  cat "$work/macros" >&2
  fail "scriptlets contain an unexpanded %-macro"
fi
ok "no %-macro left"
# A `systemctl [options] enable` command, not the word in a comment or `disable`.
if grep -nE 'systemctl([[:space:]]+-[^[:space:]]+)*[[:space:]]+enable([[:space:]]|$)' "$work/scripts" >"$work/enables"; then
  cat "$work/enables" >&2
  fail "a scriptlet enables the unit; presets (or EIB) decide that"
fi
ok "no 'enable' (presets decide)"

step "RPM requires no shared library"
rpm -qp --requires "$rpm_file" >"$work/requires"
if grep -nE '\.so(\.|\(|$)|^rtld' "$work/requires" >"$work/sodeps"; then
  cat "$work/sodeps" >&2
  fail "the RPM requires shared libraries, so the binary inside is not static"
fi
ok "$(paste -sd' ' "$work/requires")"

step "binary inside the RPM is the static one"
mkdir -p "$work/payload"
(cd "$work/payload" && rpm2cpio "$rpm_file" | cpio -idm --quiet)
inside=$work/payload/usr/bin/endpoint-copier
[[ -f $inside ]] || fail "no /usr/bin/endpoint-copier in the payload"
inside_file=$(file -b "$inside")
[[ $inside_file == *"static-pie linked"* || $inside_file == *"statically linked"* ]] \
  || fail "/usr/bin/endpoint-copier in the RPM is not static: $inside_file"
cmp -s "$inside" "$binary" || fail "/usr/bin/endpoint-copier in the RPM differs from $binary"
ok "static and identical to $binary"
grep -qx -- '-rw-r--r-- /usr/share/man/man1/endpoint-copier.1.gz' "$work/modes" || fail "the man page is not 0644"
for server in rke2-server k3s; do
  cmp -s "$work/payload/usr/lib/systemd/system/$server.service.d/50-endpoint-copier.conf" \
    "systemd/$server.service.d/50-endpoint-copier.conf" \
    || fail "the $server.service drop-in in the RPM differs from systemd/$server.service.d/"
done
ok "drop-ins identical to systemd/*.service.d/"

step "man pages: man finds them in the unpacked RPM, and renders them without warnings"
manpath=$work/payload/usr/share/man
for page in "${man_pages[@]}"; do
  name=${page%.1}
  found=$(MANPATH=$manpath man -w "$name" 2>&1) || fail "man -w $name: not found in the RPM's $manpath ($found)"
  [[ $found == "$manpath/man1/$page.gz" ]] || fail "man -w $name found '$found', not the RPM's page"
  rendered=$(MANPATH=$manpath MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$found" 2>"$work/man-warnings") \
    || fail "man -l $found failed: $(cat "$work/man-warnings")"
  [[ ! -s $work/man-warnings ]] || { cat "$work/man-warnings" >&2; fail "groff warns about $page"; }
  [[ $rendered == *NAME* && $rendered == *SYNOPSIS* && $rendered == *"SEE ALSO"* ]] \
    || fail "man -l $page lacks NAME, SYNOPSIS or SEE ALSO"
done
ok "${#man_pages[@]} pages: man -w finds each, man -l renders each with NAME, SYNOPSIS, SEE ALSO, no warning"
MANPATH=$manpath MANWIDTH=80 man endpoint-copier 2>/dev/null | grep -q 'endpoint-copier-drain(1)' \
  || fail "'man endpoint-copier' does not list endpoint-copier-drain(1)"
ok "man endpoint-copier lists the subcommands' pages"

step "shell completions in the RPM"
bash_completion=$work/payload/usr/share/bash-completion/completions/endpoint-copier
complete_out=$(bash -c 'source "$1" && complete -p endpoint-copier' _ "$bash_completion" 2>&1) \
  || fail "bash cannot load $bash_completion: $complete_out"
ok "bash: $complete_out"
head -n1 "$work/payload/usr/share/zsh/site-functions/_endpoint-copier" | grep -qx '#compdef endpoint-copier' \
  || fail "the zsh completion does not start with '#compdef endpoint-copier'"
grep -q '^complete -c endpoint-copier ' "$work/payload/usr/share/fish/vendor_completions.d/endpoint-copier.fish" \
  || fail "the fish completion has no 'complete -c endpoint-copier'"
ok "zsh: #compdef endpoint-copier; fish: complete -c endpoint-copier"

# The combustion script is the same for every arch, and its tests run the binary built for this
# host: once, in the x86_64 pass.
if [[ $arch != x86_64 ]]; then
  printf '\npackaging checks passed for %s (RPM: %s)\n' "$arch" "$rpm_file"
  exit 0
fi

step "combustion installer"
bash -n combustion/custom/scripts/25-endpoint-copier.sh || fail "25-endpoint-copier.sh does not parse"
head -n 40 combustion/custom/scripts/25-endpoint-copier.sh | grep -qx 'set -euo pipefail' \
  || fail "25-endpoint-copier.sh does not start with set -euo pipefail"
[[ -x combustion/custom/scripts/25-endpoint-copier.sh ]] || fail "25-endpoint-copier.sh is not executable"
ok "parses, strict mode, executable"
cargo test --locked --test it combustion::
ok "tests/it/combustion.rs passed"

printf '\npackaging checks passed for %s (RPM: %s)\n' "$arch" "$rpm_file"
