#!/usr/bin/env bash
# An emulated Debian arm64 userland with the edge agent's dependencies, built once and cached.
#
#   scripts/arm64/userland.sh            (as root: debootstrap, binfmt_misc and chroot need it)
#
# Prints the root folder of the userland on its last line. Two cached stages under
# ARM64_CACHE (default .cache/arm64):
#   base-<suite>.tar    `debootstrap --arch=arm64 --foreign --variant=minbase` and its second
#                       stage run under qemu-user-static (about 3.5 minutes here)
#   rootfs/             the base, unpacked, with a venv at /opt/edge-venv holding the `edge`
#                       extra and the test tools (about a minute); rebuilt when pyproject.toml's
#                       dependencies or scripts change (its key is in rootfs/.userland-key)
# The project is installed editable from /src (`pip install -e '/src[edge]'`, compat mode: a
# path entry), and the lane binds the working tree at /src, so the code under test is always the
# tree's and its console scripts (edge-agent) are there. On the first run the Debian
# packages debootstrap, qemu-user-static and binfmt-support are installed when missing, and the
# aarch64 interpreter is registered with binfmt_misc (flag F, so it works inside the chroot).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=scripts/arm64/common.sh
. scripts/arm64/common.sh
CACHE=${ARM64_CACHE:-$ROOT/.cache/arm64}
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
TEST_TOOLS=(pytest hypothesis pytest-timeout)
BASE=$CACHE/base-$SUITE.tar
ROOTFS=$CACHE/rootfs
VENV=/opt/edge-venv

log() { printf '[arm64] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, binfmt_misc and chroot need it): sudo $0"

ensure_tools() {
  local need=()
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
  [ -d /usr/share/binfmts ] || need+=(binfmt-support)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# The kernel runs aarch64 ELF files through qemu-aarch64-static. Flag F opens the interpreter
# when registering, so it is found inside a chroot that does not hold it.
ensure_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  [ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir" \
    || die "cannot mount binfmt_misc at $dir (a container without the privilege?)"
  if [ -e "$dir/qemu-aarch64" ]; then
    grep -q '^flags:.*F' "$dir/qemu-aarch64" && return 0
    log "qemu-aarch64 is registered without flag F; registering it again"
    echo -1 > "$dir/qemu-aarch64"
  fi
  local magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  echo ":qemu-aarch64:M::$magic:$mask:$(command -v qemu-aarch64-static):F" > "$dir/register"
  log "registered qemu-aarch64 with binfmt_misc (flag F)"
}

# What the venv holds: the project's own and `edge` dependencies, and the test tools.
deps_key() {
  python3 - "${TEST_TOOLS[@]}" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = sorted(project["dependencies"]) + sorted(project["optional-dependencies"]["edge"])
print(json.dumps(sys.argv[1:]))
scripts = sorted(project.get("scripts", {}).items())
print(hashlib.sha256(json.dumps([deps, sys.argv[1:], scripts]).encode()).hexdigest()[:16])
PY
}

build_base() {
  local work
  work=$(mktemp -d "$CACHE/base-build.XXXXXX")
  log "debootstrap $SUITE arm64 (first stage) into $work"
  debootstrap --arch=arm64 --foreign --variant=minbase --include="$PACKAGES" \
    "$SUITE" "$work" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap (first stage) failed"; }
  log "second stage under qemu-user-static (minutes)"
  "${USERLAND_ENV[@]}" chroot "$work" /debootstrap/debootstrap --second-stage \
    >>"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap (second stage) failed"; }
  rm -rf "$work/var/cache/apt/archives/"*.deb
  tar -C "$work" -cf "$BASE.tmp" .
  mv "$BASE.tmp" "$BASE"
  rm -rf "$work"
}

build_rootfs() {
  local key=$1 specs=$2
  rm -rf "$ROOTFS" "$ROOTFS.tmp"
  mkdir -p "$ROOTFS.tmp"
  tar -C "$ROOTFS.tmp" -xf "$BASE"
  cp /etc/resolv.conf "$ROOTFS.tmp/etc/resolv.conf"
  # pip in the userland trusts what the host's pip trusts (a proxy's own CA, where there is one)
  local cert=${PIP_CERT:-}
  [ -n "$cert" ] || cert=$(python3 -m pip config get global.cert 2>/dev/null || true)
  [ -f "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
  cp "$cert" "$ROOTFS.tmp/etc/ssl/host-ca.crt"
  log "venv $VENV in the userland: '.[edge]' (editable, from /src) and $specs"
  local args
  args=$(python3 -c 'import json, shlex, sys; print(shlex.join(json.loads(sys.argv[1])))' "$specs")
  with_mounts "$ROOTFS.tmp" "$ROOT" "${USERLAND_ENV[@]}" PIP_CERT=/etc/ssl/host-ca.crt \
    PIP_DEFAULT_TIMEOUT=180 chroot "$ROOTFS.tmp" /bin/sh -ec "
      python3 -m venv $VENV
      $VENV/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
      $VENV/bin/python -m pip install --quiet --disable-pip-version-check \
        --config-settings editable_mode=compat -e '/src[edge]' $args
      $VENV/bin/python -m pip check
    " || die "installing the edge extra in the userland failed"
  echo "$key" > "$ROOTFS.tmp/.userland-key"
  mv "$ROOTFS.tmp" "$ROOTFS"
}

mkdir -p "$CACHE"
ensure_tools
ensure_binfmt
{ read -r specs; read -r key; } < <(deps_key)
if [ -f "$ROOTFS/.userland-key" ] && [ "$(cat "$ROOTFS/.userland-key")" = "$key" ]; then
  log "cached userland $ROOTFS (key $key)"
else
  if [ -f "$BASE" ]; then
    log "cached base $BASE"
  else
    build_base
  fi
  build_rootfs "$key" "$specs"
  log "userland ready: $ROOTFS (key $key)"
fi
echo "$ROOTFS"
