# Shared by userland.sh and lane.sh (sourced, not run).
#
# with_mounts ROOTFS SRC CMD...: run CMD (a host command) in a private mount namespace where
# the userland has /proc, /dev, a fresh /tmp and the working tree SRC at /src. The mounts
# vanish with the namespace, whatever way CMD ends; processes started under CMD (the host's
# tests, and the userland's processes they start through chroot) see them.
with_mounts() {
  local rootfs=$1 src=$2
  shift 2
  mkdir -p "$rootfs/src" "$rootfs/proc" "$rootfs/dev" "$rootfs/tmp"
  unshare --mount --propagation private -- /bin/bash -ec '
    rootfs=$1 src=$2; shift 2
    mount -t proc proc "$rootfs/proc"
    mount --rbind /dev "$rootfs/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$rootfs/tmp"
    mount --bind "$src" "$rootfs/src"
    exec "$@"
  ' with-mounts "$rootfs" "$src" "$@"
}

# The environment a userland command starts with: nothing of the host's but what is named here.
USERLAND_ENV=(env -i PATH=/opt/edge-venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
