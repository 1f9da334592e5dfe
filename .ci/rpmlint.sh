#!/usr/bin/env bash
# rpmlint, the way openSUSE runs it, on the RPMs and the spec: `.ci/rpmlint.sh RPM...` (the spec
# is always added). Called by .ci/run with the x86_64 and the aarch64 RPM.
#
# openSUSE's rpmlint is the PyPI package; it needs rpm's Python bindings, which Debian ships for
# its own /usr/bin/python3 only (python3-rpm), so it lives in a venv made from that interpreter
# with --system-site-packages (a pyenv or other python3 first on PATH cannot import rpm). The
# venv is kept under ${ENDPOINT_COPIER_CI_CACHE:-~/.cache/endpoint-copier-ci} and made once per
# rpmlint version. Spell checking of the summary and description needs enchant and an en_US
# dictionary (libenchant-2-2, hunspell-en-us). Everything missing is installed with apt-get.
#
# --strict: a warning fails like an error. Findings that do not apply are filtered with their
# reason in packaging/rpmlint.toml (what a local build lacks) and packaging/endpoint-copier-rpmlintrc
# (this package's own; rpmlint fails on a filter there that matches nothing).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# Pinned: a new rpmlint release may add checks; take it on purpose, not by accident.
rpmlint_version=2.10.0
cache=${ENDPOINT_COPIER_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/endpoint-copier-ci}
venv=$cache/rpmlint-$rpmlint_version

log() { printf '    %s\n' "$*"; }
fail() { printf '    FAIL: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 ]] || fail "usage: .ci/rpmlint.sh RPM..."
for rpm_file in "$@"; do
  [[ -f $rpm_file ]] || fail "no RPM at '$rpm_file'"
done

missing=()
# checkbashisms, for the BashismsCheck openSUSE enables (scriptlets run by /bin/sh).
command -v checkbashisms >/dev/null 2>&1 || missing+=(devscripts)
/usr/bin/python3 -c 'import rpm' >/dev/null 2>&1 || missing+=(python3-rpm)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
dpkg -s libenchant-2-2 >/dev/null 2>&1 || missing+=(libenchant-2-2)
dpkg -s hunspell-en-us >/dev/null 2>&1 || missing+=(hunspell-en-us)
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
    || fail "apt-get install ${missing[*]} failed"
fi

if ! "$venv/bin/rpmlint" --version >/dev/null 2>&1; then
  log "making $venv (rpmlint $rpmlint_version from PyPI, rpm from Debian's python3-rpm)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" || fail "cannot make the venv $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "rpmlint==$rpmlint_version" \
    || fail "pip install rpmlint==$rpmlint_version failed"
fi
"$venv/bin/python" -c 'import enchant; enchant.Dict("en_US")' >/dev/null 2>&1 \
  || fail "rpmlint's spell checking has no en_US dictionary (libenchant-2-2, hunspell-en-us)"
log "rpmlint $("$venv/bin/rpmlint" --version), spell checking on"

"$venv/bin/rpmlint" --strict \
  -c packaging/rpmlint.toml \
  -r packaging/endpoint-copier-rpmlintrc \
  "$@" packaging/endpoint-copier.spec \
  || fail "rpmlint reports what is neither fixed nor filtered with a reason (above)"
