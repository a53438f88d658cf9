#!/usr/bin/env bash
# Builds the tiny initramfs the QEMU interop tests boot (vswitch-datapath/tests/qemu.rs):
# busybox-static, the virtio-net driver's modules from the INSTALLED kernel package (not the
# host's running kernel: containers and CI VMs run another one), the `vsq` helper (ethtool's
# channel and statistics ioctls, which busybox lacks) and scripts/qemu/guest-init as /init.
#
#   scripts/qemu/build-initramfs.sh OUT.cpio
#
# Prints what it did on stderr and, on stdout, one line `VS_KERNEL=<path>`: the kernel these
# modules belong to (the harness boots that one). The kernel is the newest /lib/modules/<version>
# that has a /boot/vmlinuz-<version>, or $VS_KERNEL_VERSION. When it can be booted through PVH
# (CONFIG_PVH=y), the uncompressed ELF `vmlinux-<version>` is extracted next to OUT and named
# instead: QEMU then starts it directly, which skips the XZ decompression of the bzImage, ~3 s of
# the ~5 s a TCG boot takes on an idle machine (and 10 s or more on a busy one). Set
# VS_KERNEL_BZIMAGE=1 to boot the bzImage anyway.
#
# For each module the driver needs (virtio_pci, virtio_net and what they depend on, from
# modules.dep) /boot/config-<version> and modules.builtin say whether it is built in (nothing to
# load) or a module (copied, decompressed if need be, and loaded by /init with insmod in
# dependency order, listed in /etc/vs-modules).
set -euo pipefail

out=${1:?usage: build-initramfs.sh OUT.cpio}
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "build-initramfs: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- the kernel -------------------------------------------------------------------------------
kver=${VS_KERNEL_VERSION:-}
if [ -z "$kver" ]; then
  for d in $(ls -1 /lib/modules 2>/dev/null | sort -rV); do
    if [ -f "/boot/vmlinuz-$d" ] && [ -f "/lib/modules/$d/modules.dep" ]; then kver=$d; break; fi
  done
fi
[ -n "$kver" ] || die "no /lib/modules/<version> with a matching /boot/vmlinuz-<version> (apt-get install linux-image-amd64)"
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] || die "$kernel is not readable"
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing"
config=/boot/config-$kver
say "kernel $kernel (modules $moddir)"

# --- busybox ----------------------------------------------------------------------------------
busybox=${VS_BUSYBOX:-}
if [ -z "$busybox" ]; then
  for b in /bin/busybox /usr/bin/busybox /usr/lib/busybox/busybox-static; do
    if [ -x "$b" ]; then busybox=$b; break; fi
  done
fi
[ -n "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
if command -v file >/dev/null 2>&1 && file -L "$busybox" | grep -q 'dynamically linked'; then
  die "$busybox is dynamically linked (apt-get install busybox-static)"
fi
command -v cpio >/dev/null 2>&1 || die "cpio not found (apt-get install cpio)"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules,usr/bin,usr/sbin}
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"

# --- modules ----------------------------------------------------------------------------------
# Config symbol of each module the guest may need (for the report and the sanity check).
declare -A symbol=(
  [virtio_ring]=CONFIG_VIRTIO [virtio]=CONFIG_VIRTIO
  [virtio_pci_legacy_dev]=CONFIG_VIRTIO_PCI_LIB_LEGACY [virtio_pci_modern_dev]=CONFIG_VIRTIO_PCI_LIB
  [virtio_pci]=CONFIG_VIRTIO_PCI [virtio_net]=CONFIG_VIRTIO_NET
  [net_failover]=CONFIG_NET_FAILOVER [failover]=CONFIG_FAILOVER
)
config_of() { # module -> y | m | n | ? (no config file or unknown symbol)
  local s=${symbol[$1]:-}
  if [ -z "$s" ] || [ ! -f "$config" ]; then echo '?'; return; fi
  local v
  v=$(grep -E "^$s=" "$config" | cut -d= -f2 || true)
  echo "${v:-n}"
}
# modules.dep path of a module (name with - or _), empty if it is not a loadable module.
dep_path() {
  local n=${1//-/_}
  awk -F: -v n="$n" '{ b=$1; sub(/.*\//, "", b); sub(/\.ko(\.(xz|zst|gz))?$/, "", b); gsub(/-/, "_", b);
                       if (b == n) { print $1; exit } }' "$moddir/modules.dep"
}
is_builtin() {
  local n=${1//-/_}
  [ -f "$moddir/modules.builtin" ] &&
    sed -e 's#.*/##' -e 's#\.ko$##' -e 's#-#_#g' "$moddir/modules.builtin" | grep -qx "$n"
}
name_of() { local b=${1##*/}; b=${b%.xz}; b=${b%.zst}; b=${b%.gz}; b=${b%.ko}; echo "${b//-/_}"; }

order=()        # module names in load order
declare -A have=()
add_module() { # path relative to moddir (deps first)
  local rel=$1 name
  name=$(name_of "$rel")
  [ -n "${have[$name]:-}" ] && return
  have[$name]=1
  local src=$moddir/$rel dst=$root/lib/modules/$name.ko
  case $rel in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -dcq "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) die "unknown module file $rel" ;;
  esac
  order+=("$name")
}
for want in virtio_pci virtio_net; do
  cfg=$(config_of "$want")
  if is_builtin "$want" || [ "$cfg" = y ]; then
    say "$want: built in ($config: ${symbol[$want]}=$cfg)"
    continue
  fi
  rel=$(dep_path "$want")
  [ -n "$rel" ] || die "$want is neither built in nor in $moddir/modules.dep (${symbol[$want]}=$cfg)"
  deps=$(grep -E "^$rel:" "$moddir/modules.dep" | cut -d: -f2)
  # modules.dep lists every (transitive) dependency, the one to load first last.
  rev=()
  for d in $deps; do rev=("$d" "${rev[@]}"); done
  for d in "${rev[@]}"; do add_module "$d"; done
  add_module "$rel"
done
for m in "${order[@]}"; do say "module $m: loadable (${symbol[$m]:-?}=$(config_of "$m")), insmod in this order"; done
for m in failover net_failover virtio_pci_legacy_dev virtio_pci_modern_dev virtio virtio_ring; do
  [ -n "${have[$m]:-}" ] || say "module $m: not loaded ($(is_builtin "$m" && echo built in || echo "not needed"), ${symbol[$m]}=$(config_of "$m"))"
done
printf '%s\n' "${order[@]}" >"$root/etc/vs-modules"

# --- vsq: ethtool -L / -S for busybox ---------------------------------------------------------
cc=${CC:-cc}
command -v "$cc" >/dev/null 2>&1 || die "no C compiler ($cc) for the vsq helper"
"$cc" -static -Os -Wall -Werror -o "$root/bin/vsq" "$here/vsq.c" || die "cannot build $here/vsq.c statically (libc6-dev)"
strip "$root/bin/vsq" 2>/dev/null || true

# --- /init ------------------------------------------------------------------------------------
cp "$here/guest-init" "$root/init"
chmod 755 "$root/init"

# --- the archive (uncompressed: nothing to inflate at boot under TCG) ---------------------------
mkdir -p "$(dirname "$out")"
tmp=$out.tmp.$$
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) >"$tmp"
mv "$tmp" "$out"
say "wrote $out ($(du -k "$out" | cut -f1) KiB)"

# --- the kernel to boot: the PVH-bootable vmlinux if there is one ---------------------------------
boot=$kernel
if [ -z "${VS_KERNEL_BZIMAGE:-}" ] && [ -f "$config" ] && grep -q '^CONFIG_PVH=y' "$config"; then
  vmlinux=$(dirname "$out")/vmlinux-$kver
  if [ -s "$vmlinux" ] && [ "$vmlinux" -nt "$kernel" ]; then
    boot=$vmlinux
  else
    # The payload of a bzImage is the compressed ELF; find it by its magic (as the kernel's
    # scripts/extract-vmlinux does) and decompress it.
    for fmt in 'xz:\xfd7zXZ\x00:xz -dcq --single-stream' 'zstd:\x28\xb5\x2f\xfd:zstd -dcq' \
      'gzip:\x1f\x8b\x08:gzip -dcq' 'lz4:\x02\x21\x4c\x18:lz4 -dcq'; do
      tool=${fmt%%:*} rest=${fmt#*:} magic=${rest%%:*} cmd=${rest#*:}
      command -v "$tool" >/dev/null 2>&1 || continue
      for pos in $(LC_ALL=C grep -obUaP "$magic" "$kernel" 2>/dev/null | cut -d: -f1 | head -5); do
        tail -c +$((pos + 1)) "$kernel" | $cmd >"$vmlinux.tmp.$$" 2>/dev/null || true
        if [ "$(head -c 4 "$vmlinux.tmp.$$" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
          mv "$vmlinux.tmp.$$" "$vmlinux"
          boot=$vmlinux
          break 2
        fi
      done
    done
    rm -f "$vmlinux.tmp.$$"
  fi
  if [ "$boot" = "$kernel" ]; then
    say "could not extract an ELF vmlinux from $kernel: booting the bzImage"
  fi
fi
say "boots $boot"
echo "VS_KERNEL=$boot"
