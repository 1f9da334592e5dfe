#!/bin/bash
# Installs and enables endpoint-copier on first boot, for images that cannot side-load the RPM.
# Run by combustion (through EIB's generated `script`) from the combustion directory, where EIB
# copies everything in the definition's custom/files/. See docs/usage/install-eib.md.
#
# Why 25: EIB runs its own and the custom scripts in name order. 25 comes after EIB's
# 19-copy-os-files.sh (so a site drop-in shipped through os-files/ is already in /etc) and before
# the cleanup script (99-cleanup-combustion.sh, or cleanup-combustion.sh in newer EIB, which sorts
# after every numbered name), which deletes /combustion and the files we copy from.
#
# Which arch: the one of the binary staged beside it (stage.sh takes the x86_64 build of `cargo
# dist` or the aarch64 build of `cargo dist-aarch64`). EIB builds an image for one arch; an
# executable for another arch than the node's (`uname -m`) is refused before anything is
# installed, and the arch installed is logged.
#
# Why /usr/bin and /usr/lib even on SL Micro, whose /usr is read-only: combustion runs inside a
# new transactional-update snapshot, where /usr is writable; the snapshot becomes the booted
# system. The layout is exactly the RPM's, so switching to the RPM later replaces the same paths.
#
# Files read from $ENDPOINT_COPIER_FILES (default: this script's directory):
#   endpoint-copier                      the static binary (required)
#   endpoint-copier.service              systemd/endpoint-copier.service (required)
#   endpoint-copier-10-defaults.toml     packaging/config.d/10-defaults.toml (required)
#   endpoint-copier-50-site.toml         site drop-in, installed as /etc/.../50-site.toml (optional)
#   endpoint-copier-rke2-server.conf     systemd/rke2-server.service.d/50-endpoint-copier.conf
#   endpoint-copier-k3s.conf             systemd/k3s.service.d/50-endpoint-copier.conf
#                                        (the drain/resume hooks; each installed when present, where
#                                        the RPM puts it; stage.sh always stages both)
# The man pages and the bash, zsh and fish completions are not staged: the installed binary
# writes them (its hidden `generate`), and they land where the RPM puts them.
# Environment:
#   ENDPOINT_COPIER_ROOT       root directory to install into (default: /), for tests and chroots
#   ENDPOINT_COPIER_SYSTEMCTL  systemctl to enable the unit with (default: systemctl); when it is
#                              missing or fails, the wants symlinks are created directly
#   ENDPOINT_COPIER_CHECK      warn (default): run `endpoint-copier check` and log a failure;
#                              strict: fail on it; off: do not run it
#
# Idempotent: a second run changes nothing and says so. Every change is logged on stdout, one
# line each, prefixed "endpoint-copier:" (combustion sends it to the console and the journal).
set -euo pipefail

readonly unit=endpoint-copier.service
root=${ENDPOINT_COPIER_ROOT:-/}
files=${ENDPOINT_COPIER_FILES:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
systemctl_cmd=${ENDPOINT_COPIER_SYSTEMCTL:-systemctl}
check_mode=${ENDPOINT_COPIER_CHECK:-warn}
changes=0

log() { printf 'endpoint-copier: %s\n' "$*"; }
die() { printf 'endpoint-copier: error: %s\n' "$*" >&2; exit 1; }

case $check_mode in
  warn | strict | off) ;;
  *) die "ENDPOINT_COPIER_CHECK='$check_mode' is not one of warn, strict, off" ;;
esac
[[ -d $root ]] || die "root directory '$root' does not exist (ENDPOINT_COPIER_ROOT)"
# Absolute and without a trailing slash, so "$root/usr/bin" never becomes "//usr/bin" or relative.
root=$(cd "$root" && pwd)
[[ $root == / ]] && root=""

# Check every input before changing anything, so a missing file never leaves half an install.
for f in endpoint-copier "$unit" endpoint-copier-10-defaults.toml; do
  [[ -f $files/$f ]] || die "'$files/$f' is missing (copy it into the EIB definition's custom/files/)"
done

# binary_arch FILE: the arch an ELF executable is built for, from its header's e_machine (bytes
# 18-19, little-endian), named as `uname -m` names it; "script" for a #! script, which runs on
# any arch; "unknown" for anything else.
binary_arch() {
  local head
  head=$(od -An -tx1 -N4 "$1" | tr -d ' \n')
  case $head in
    7f454c46)
      case $(od -An -tu2 -j18 -N2 --endian=little "$1" | tr -d ' \n') in
        62) echo x86_64 ;;
        183) echo aarch64 ;;
        *) echo unknown ;;
      esac
      ;;
    2321*) echo script ;;
    *) echo unknown ;;
  esac
}

node_arch=$(uname -m)
arch=$(binary_arch "$files/endpoint-copier")
case $arch in
  script) ;;
  "$node_arch") log "binary built for $arch, like this node" ;;
  unknown) die "'$files/endpoint-copier' is not an x86_64 or aarch64 executable" ;;
  *) die "'$files/endpoint-copier' is built for $arch but this node is $node_arch (stage the $node_arch build: packaging/README.md)" ;;
esac

# install_file SRC DEST MODE: copy SRC to $root/DEST with MODE unless it is already identical.
install_file() {
  local src=$1 dest=$2 mode=$3 target=$root$2 verb=installed
  if [[ -e $target ]]; then
    if cmp -s "$src" "$target" && [[ $(stat -c %a "$target") == "${mode#0}" ]]; then
      log "unchanged $dest"
      return
    fi
    verb=updated
  fi
  mkdir -p "$(dirname "$target")"
  # Write beside the target, then rename: a crash never leaves a truncated binary or unit.
  install -m "$mode" "$src" "$target.tmp.$$"
  mv -f "$target.tmp.$$" "$target"
  log "$verb $dest (mode $mode)"
  changes=$((changes + 1))
}

# ensure_dir DIR: create $root/DIR (mode 0755) unless it exists.
ensure_dir() {
  if [[ -d $root$1 ]]; then
    return
  fi
  install -d -m 0755 "$root$1"
  log "created $1"
  changes=$((changes + 1))
}

install_file "$files/endpoint-copier" /usr/bin/endpoint-copier 0755
install_file "$files/$unit" "/usr/lib/systemd/system/$unit" 0644
install_file "$files/endpoint-copier-10-defaults.toml" /usr/lib/endpoint-copier/config.d/10-defaults.toml 0644
ensure_dir /etc/endpoint-copier/config.d
if [[ -f $files/endpoint-copier-50-site.toml ]]; then
  install_file "$files/endpoint-copier-50-site.toml" /etc/endpoint-copier/config.d/50-site.toml 0644
fi
# The drain/resume hooks on the server units (docs/usage/operations.md): drain this host's Node
# before rke2-server/k3s stops, resume once it is ready. Optional inputs, so a folder staged by an
# older stage.sh still installs; nothing to enable (drop-ins apply to their unit as they are).
for server in rke2-server k3s; do
  if [[ -f $files/endpoint-copier-$server.conf ]]; then
    install_file "$files/endpoint-copier-$server.conf" \
      "/usr/lib/systemd/system/$server.service.d/50-endpoint-copier.conf" 0644
  fi
done

# The man pages and shell completions, written by the binary just installed from its command-line
# definition (the hidden `generate`), at the RPM's paths, man pages gzipped like the RPM's (-n:
# no name or time in the header, so an unchanged page compares equal on the next run).
# Documentation only: if the binary cannot write them, say so and go on.
generated=$(mktemp -d "${TMPDIR:-/tmp}/endpoint-copier-generated.XXXXXX")
trap 'rm -rf "$generated"' EXIT
if "$root/usr/bin/endpoint-copier" generate man "$generated/man" >/dev/null \
  && "$root/usr/bin/endpoint-copier" generate completions "$generated/completions" >/dev/null; then
  shopt -s nullglob
  for page in "$generated"/man/*.1; do
    gzip -9n "$page"
    install_file "$page.gz" "/usr/share/man/man1/$(basename "$page").gz" 0644
  done
  shopt -u nullglob
  for completion in endpoint-copier.bash:/usr/share/bash-completion/completions/endpoint-copier \
                    _endpoint-copier:/usr/share/zsh/site-functions/_endpoint-copier \
                    endpoint-copier.fish:/usr/share/fish/vendor_completions.d/endpoint-copier.fish; do
    if [[ -f $generated/completions/${completion%%:*} ]]; then
      install_file "$generated/completions/${completion%%:*}" "${completion#*:}" 0644
    fi
  done
else
  log "warning: endpoint-copier generate failed; no man pages or shell completions installed"
fi

# Enabling = one symlink per WantedBy= target of the unit's [Install] section. systemctl is
# preferred (it also honours Also= and aliases); without it (a minimal chroot, a test root, a
# systemctl too old for --root) we create exactly the symlinks systemctl would.
wanted_by=$(awk '
  /^[[:space:]]*\[/ { in_install = ($0 ~ /^[[:space:]]*\[Install\]/) ; next }
  in_install && /^[[:space:]]*WantedBy[[:space:]]*=/ { sub(/^[^=]*=/, ""); print }
' "$root/usr/lib/systemd/system/$unit" | tr -s ' \t' '\n\n' | sed '/^$/d')
[[ -n $wanted_by ]] || die "$unit has no WantedBy= in [Install]; nothing to enable it from"

missing=()
for target in $wanted_by; do
  link=/etc/systemd/system/$target.wants/$unit
  if [[ $(readlink "$root$link" 2>/dev/null) != "/usr/lib/systemd/system/$unit" ]]; then
    missing+=("$target")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  log "unchanged $unit, already enabled for $(echo $wanted_by)"
else
  enabled_by=""
  if command -v "$systemctl_cmd" >/dev/null 2>&1 \
    && "$systemctl_cmd" --root="${root:-/}" --quiet enable "$unit" >/dev/null 2>&1; then
    enabled_by=systemctl
  fi
  for target in "${missing[@]}"; do
    link=/etc/systemd/system/$target.wants/$unit
    if [[ $(readlink "$root$link" 2>/dev/null) != "/usr/lib/systemd/system/$unit" ]]; then
      # Absolute target, as systemctl writes it: it resolves inside the booted system.
      mkdir -p "$(dirname "$root$link")"
      ln -sfn "/usr/lib/systemd/system/$unit" "$root$link"
      enabled_by=symlink
    fi
  done
  log "enabled $unit for ${missing[*]} (by $enabled_by)"
  changes=$((changes + 1))
fi

# SL Micro enforces SELinux: give what we created the labels the policy expects. Only on the
# real root; a test root has no policy to apply.
if [[ -z $root ]] && command -v restorecon >/dev/null 2>&1; then
  restorecon -RF /usr/bin/endpoint-copier "/usr/lib/systemd/system/$unit" \
    /usr/lib/systemd/system/rke2-server.service.d /usr/lib/systemd/system/k3s.service.d \
    /usr/lib/endpoint-copier /etc/endpoint-copier /etc/systemd/system \
    /usr/share/man/man1 /usr/share/bash-completion /usr/share/zsh /usr/share/fish >/dev/null 2>&1 || :
fi

# Validate the merged configuration now, while the console is watched, rather than have the unit
# exit 78 (no restart) at its first start. The kubeconfig may not exist yet on first boot.
if [[ $check_mode != off ]]; then
  status=0
  "$root/usr/bin/endpoint-copier" check \
    --config-dir "$root/usr/lib/endpoint-copier/config.d" \
    --config-dir "$root/etc/endpoint-copier/config.d" || status=$?
  if [[ $status -eq 0 ]]; then
    log "configuration valid (endpoint-copier check)"
  elif [[ $check_mode == strict ]]; then
    die "endpoint-copier check failed with exit code $status; fix /etc/endpoint-copier/config.d"
  else
    log "warning: endpoint-copier check failed with exit code $status; the unit will not run until /etc/endpoint-copier/config.d is fixed"
  fi
fi

if [[ $changes -eq 0 ]]; then
  log "nothing to change, already installed and enabled"
else
  log "done, $changes change(s)"
fi
