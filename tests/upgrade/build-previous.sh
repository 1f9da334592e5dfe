#!/usr/bin/env bash
# Builds the binary of the previous release, the one CHANGELOG.md names ("Previous release:
# X.Y.Z = commit <hash>"), for the opt-in rolling-upgrade test (tests/it/upgrade.rs), and prints
# its path on stdout (everything else goes to stderr):
#
#   export ENDPOINT_COPIER_TEST_PREVIOUS_BIN=$(tests/upgrade/build-previous.sh)
#   cargo test --test it upgrade
#
# The source comes from `git archive` of that commit (no worktree is registered, nothing of
# the checkout changes) into target/previous/<commit>/src. Options, all by environment:
#   PREVIOUS_COMMIT      another commit to build (default: the one CHANGELOG.md names)
#   PREVIOUS_PROFILE     `debug` (default) or `release` (slow: fat LTO)
#   CARGO_TARGET_DIR     where cargo builds (default: target/previous/<commit>/target). Pointing
#                        it at this checkout's own target/ reuses its compiled dependencies (the
#                        lock files are the same), so only the crate itself is compiled; the
#                        binary is copied out at once, so the next build here cannot overwrite it.
# Idempotent: a binary already built for that commit and profile is printed without building.
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
log() { printf 'build-previous: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

commit=${PREVIOUS_COMMIT:-$(sed -n 's/.*Previous release: [0-9][0-9.]* = commit \([0-9a-f]\{40\}\).*/\1/p' "$repo/CHANGELOG.md" | head -n 1)}
[ -n "$commit" ] || die "CHANGELOG.md names no previous release ('Previous release: X.Y.Z = commit <40 hex>')"
commit=$(git -C "$repo" rev-parse --verify "$commit^{commit}") || die "commit '$commit' is not in this repository"
profile=${PREVIOUS_PROFILE:-debug}
case $profile in
  debug) profile_flag=() ;;
  release) profile_flag=(--release) ;;
  *) die "PREVIOUS_PROFILE must be debug or release, not '$profile'" ;;
esac

base=$repo/target/previous/$commit
version=$(git -C "$repo" show "$commit:Cargo.toml" | sed -n 's/^version = "\(.*\)"$/\1/p' | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml at $commit"
out=$base/endpoint-copier-$version-$profile
if [ -x "$out" ]; then
  log "already built: endpoint-copier $version ($commit, $profile)"
  printf '%s\n' "$out"
  exit 0
fi

src=$base/src
if [ ! -f "$src/Cargo.toml" ]; then
  log "unpacking $commit into $src"
  rm -rf "$src"
  mkdir -p "$src"
  git -C "$repo" archive --format=tar "$commit" | tar -x -C "$src"
fi

target=${CARGO_TARGET_DIR:-$base/target}
log "building endpoint-copier $version ($commit, $profile) in $target"
# The archive has no .git: the commit goes in as the RPM build passes it (build.rs).
SOURCE_GIT_COMMIT=${commit:0:12} cargo build --locked --bin endpoint-copier \
  --manifest-path "$src/Cargo.toml" --target-dir "$target" "${profile_flag[@]}" >&2
cp "$target/$profile/endpoint-copier" "$out.tmp"
mv "$out.tmp" "$out"
"$out" --version >&2
printf '%s\n' "$out"
