#!/usr/bin/env bash
# aarch64 in CI, called by .ci/run: cross-builds the static release binary (`cargo dist-aarch64`)
# on this x86_64 Debian host and runs what can run under qemu user emulation: the unit tests
# (`cargo test-aarch64 --lib`) and the demo (`cargo run-aarch64 --example demo`). The RPM around
# the binary is .ci/check-packaging.sh's (ENDPOINT_COPIER_ARCH=aarch64), which reuses this build.
#
# Not run under qemu: the integration suite (tests/it). 61 of its 233 tests exec an aarch64
# executable — the daemon, or the test binary re-running itself inside a network namespace — and
# the kernel here cannot: qemu-user emulates only the process it starts, and this host has no
# binfmt_misc handler for aarch64 (registering one needs the host's privileges). 2 combustion
# tests compare the test's own arch (aarch64 under qemu) with the host's `uname -m`. The other
# 170 pass under qemu (one run of the whole suite: 169 in 4 min on the loaded CI machine, the
# one failure a 15 s wait that passes alone), but they test arch-independent code that `cargo
# test --workspace` runs natively, and would add minutes to CI. packaging/README.md ("aarch64")
# has the figures.
#
# Installs, only when missing: `dpkg --add-architecture arm64` and Debian's rustc-web (1.96, its
# /usr/bin/rustc) with libstd-rust-web-dev:arm64 (an aarch64 standard library; the rustup
# toolchain has none), gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (linker, C compiler for
# ring, the static libc.a), qemu-user-static. Prints the time of each step.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
binary=$target_dir/aarch64-unknown-linux-gnu/release/endpoint-copier

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() { printf '    FAIL: %s\n' "$*" >&2; exit 1; }
# timed LABEL COMMAND...: runs COMMAND and records how long it took, for the summary.
timings=()
timed() {
  local label=$1 start=$SECONDS
  shift
  "$@"
  timings+=("$label: $((SECONDS - start)) s")
}

step "aarch64 toolchain: Debian's rustc-web with an arm64 std, cross gcc, qemu"
packages=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  start=$SECONDS
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  printf '    installing %s\n' "${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed"
  timings+=("apt-get install (first run only): $((SECONDS - start)) s")
fi
rustc_release=$(/usr/bin/rustc -vV | sed -n 's/^release: //p')
[[ -d $(/usr/bin/rustc --print sysroot)/lib/rustlib/aarch64-unknown-linux-gnu/lib ]] \
  || fail "/usr/bin/rustc $rustc_release has no aarch64 standard library (libstd-rust-web-dev:arm64)"
ok "/usr/bin/rustc $rustc_release with an aarch64 std; $(aarch64-linux-gnu-gcc --version | head -n1); $(qemu-aarch64-static --version | head -n1)"

step "the aarch64 aliases carry the same settings (.cargo/config.toml)"
/usr/bin/python3 - <<'EOF' || fail "dist-aarch64, test-aarch64 and run-aarch64 disagree (above)"
import tomllib
aliases = tomllib.load(open(".cargo/config.toml", "rb"))["alias"]
def configs(name):
    args = aliases[name]
    return {args[i + 1] for i, a in enumerate(args) if a == "--config"}
common = configs("dist-aarch64")
for name in ("test-aarch64", "run-aarch64"):
    extra = {"target.aarch64-unknown-linux-gnu.runner = \"qemu-aarch64-static\"", "profile.dev.debug = 0"}
    if configs(name) - extra != common:
        print(f"    {name}: {sorted(configs(name) ^ common)}")
        raise SystemExit(1)
EOF
ok "dist-aarch64, test-aarch64, run-aarch64"

step "cargo dist-aarch64 (static release binary)"
timed "cargo dist-aarch64" cargo dist-aarch64
file_out=$(file -b "$binary")
printf '    %s\n' "$file_out"
[[ $file_out == *"ARM aarch64"* && $file_out == *"statically linked"* ]] \
  || fail "$binary is not a statically linked aarch64 executable"
version_out=$(qemu-aarch64-static "$binary" version) || fail "'$binary version' failed under qemu"
ok "$version_out (under qemu-aarch64-static), $(stat -c %s "$binary") bytes"

step "unit tests under qemu: cargo test-aarch64 --lib"
timed "cargo test-aarch64 --lib --no-run (build)" cargo test-aarch64 --lib --no-run
timed "cargo test-aarch64 --lib (run under qemu)" cargo test-aarch64 --lib

step "demo under qemu: cargo run-aarch64 --example demo"
timed "cargo run-aarch64 --example demo (build and run)" cargo run-aarch64 --example demo

step "aarch64 timings"
for t in "${timings[@]}"; do printf '    %s\n' "$t"; done
printf '\naarch64 checks passed\n'
