#!/usr/bin/env bash
# Installs the Debian packages corral needs, only when something is missing (fast when done).
set -euo pipefail
declare -A need=(
  [bwrap]=bubblewrap [nft]=nftables [iptables]=iptables [ip]=iproute2 [setpriv]=util-linux
  [curl]=curl [git]=git [node]=nodejs [nginx]=nginx-light [hey]=hey [wrk]=wrk [rg]=ripgrep
  [tmux]=tmux [openssl]=openssl [strace]=strace [npm]=npm [chromium]=chromium
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || ls /usr/lib/*/libseccomp.so.2 >/dev/null 2>&1 \
  || missing+=(libseccomp2)
# The control plane's tests start their own PostgreSQL cluster from Debian's server binaries.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "corral setup: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "corral setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
