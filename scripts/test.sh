#!/usr/bin/env bash
# Runs every test of the workspace, the DPDK-backed ones included.
# Installs what is missing first (Debian's DPDK 22.11: libdpdk-dev, dpdk, pkg-config).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists libdpdk 2>/dev/null || need+=(libdpdk-dev)
dpkg -s dpdk >/dev/null 2>&1 || need+=(dpdk)
command -v dpdk-testpmd >/dev/null 2>&1 || need+=(dpdk-dev)   # Debian ships dpdk-testpmd in dpdk-dev
# The QEMU + Linux guest tests (vswitch-datapath/tests/qemu.rs, qemu_linux.rs): QEMU, a kernel, and
# what scripts/qemu/build-initramfs.sh packs (static busybox, cpio; a static libc for vsq).
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v modinfo >/dev/null 2>&1 || need+=(kmod)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

echo "== unit, conformance, policy and integration tests (CPU engines; testpmd and QEMU guests)"
cargo test --workspace --all-targets

echo "== dmadev backend on DPDK's dma_skeleton (--no-huge --no-pci)"
cargo test -p copy-engine-dmadev --features dmadev

echo "== the vhost datapath on dma_skeleton"
cargo test -p vswitch-datapath --features dmadev --test dmadev_pvp --test dmadev_pmds
