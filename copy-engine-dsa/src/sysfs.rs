//! Work-queue discovery through sysfs (`/sys/bus/dsa/devices`), from a configurable root so tests
//! can point it at a fake tree.
//!
//! This module owns reading and validating a WQ's attributes (as the kernel's idxd driver
//! publishes them, `Documentation/ABI/stable/sysfs-driver-dsa`). It opens no device and maps
//! nothing; [`crate::portal`] does.

use std::path::{Path, PathBuf};

use crate::error::DsaError;

/// Where the kernel publishes DSA devices and work queues.
pub const SYSFS_ROOT: &str = "/sys/bus/dsa/devices";

/// Where the idxd driver creates the character devices of user work queues.
pub const DEV_ROOT: &str = "/dev/dsa";

/// How descriptors reach a work queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WqMode {
    /// One client owns the WQ: MOVDIR64B, which never reports a full queue (a descriptor written
    /// to a full dedicated WQ is dropped), so the submitter counts occupancy itself.
    Dedicated,
    /// Several clients share the WQ: ENQCMD, which reports "retry" when the queue is full.
    Shared,
}

/// What discovery found out about one work queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WqInfo {
    /// The WQ's name, e.g. `wq0.0`.
    pub name: String,
    /// The device it belongs to, e.g. `dsa0`.
    pub device: String,
    /// Dedicated or shared.
    pub mode: WqMode,
    /// Entries in the WQ: the most descriptors it holds at once.
    pub size: usize,
    /// Longest transfer one descriptor may ask for, in bytes.
    pub max_transfer_size: usize,
    /// Most descriptors one batch may hold.
    pub max_batch_size: usize,
    /// The WQ was configured with block-on-fault enabled.
    pub block_on_fault: bool,
    /// The character device to open (`/dev/dsa/wq0.0`).
    pub dev_path: PathBuf,
}

/// Lists the user-type, enabled work queues under `sysfs_root` (normally [`SYSFS_ROOT`]), sorted
/// by name. Queues that are not usable are left out; [`find_wq`] says why a named one is not.
pub fn list_wqs(sysfs_root: &Path, dev_root: &Path) -> Vec<WqInfo> {
    let mut out: Vec<WqInfo> =
        wq_names(sysfs_root).iter().filter_map(|n| read_wq(sysfs_root, dev_root, n).ok()).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads and checks the WQ `name` (`wq0.0`; `dsa0/wq0.0` is accepted too).
///
/// # Errors
///
/// [`DsaError::NoSuchWq`] (with the usable ones listed) when there is no such WQ or no DSA
/// driver at all; [`DsaError::WqNotUsable`] when it exists but is disabled, not of type `user`,
/// or has no entries.
pub fn find_wq(sysfs_root: &Path, dev_root: &Path, name: &str) -> Result<WqInfo, DsaError> {
    let name = name.rsplit('/').next().unwrap_or(name);
    if !wq_names(sysfs_root).iter().any(|n| n == name) {
        return Err(DsaError::NoSuchWq {
            name: name.to_string(),
            available: list_wqs(sysfs_root, dev_root).into_iter().map(|w| w.name).collect(),
        });
    }
    read_wq(sysfs_root, dev_root, name)
}

fn wq_names(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.strip_prefix("wq").is_some_and(|r| r.split_once('.').is_some()))
        .collect()
}

fn attr(dir: &Path, name: &str) -> Result<String, DsaError> {
    let p = dir.join(name);
    std::fs::read_to_string(&p).map(|s| s.trim().to_string()).map_err(|source| DsaError::Io { path: p, source })
}

fn num(dir: &Path, name: &str) -> Result<usize, DsaError> {
    let s = attr(dir, name)?;
    let v = s.strip_prefix("0x").map_or_else(|| s.parse(), |h| usize::from_str_radix(h, 16));
    v.map_err(|_| DsaError::Parse { path: dir.join(name), value: s })
}

fn read_wq(root: &Path, dev_root: &Path, name: &str) -> Result<WqInfo, DsaError> {
    let dir = root.join(name);
    let unusable = |reason: String| DsaError::WqNotUsable { name: name.to_string(), reason };
    let (dev_idx, _) = name["wq".len()..].split_once('.').ok_or_else(|| unusable("name is not wqN.M".into()))?;
    let device = format!("dsa{dev_idx}");
    let mode = match attr(&dir, "mode")?.as_str() {
        "dedicated" => WqMode::Dedicated,
        "shared" => WqMode::Shared,
        other => return Err(unusable(format!("unknown mode {other:?}"))),
    };
    let ty = attr(&dir, "type")?;
    if ty != "user" {
        return Err(unusable(format!("type is {ty:?}, not \"user\" (accel-config config-wq --type=user)")));
    }
    let state = attr(&dir, "state")?;
    if state != "enabled" {
        return Err(unusable(format!("state is {state:?} (accel-config enable-wq {device}/{name})")));
    }
    let size = num(&dir, "size")?;
    if size == 0 {
        return Err(unusable("size is 0".into()));
    }
    let max_transfer_size = num(&dir, "max_transfer_size")?;
    // Older kernels publish max_batch_size only on the device.
    let max_batch_size = num(&dir, "max_batch_size").or_else(|_| num(&root.join(&device), "max_batch_size"))?;
    let block_on_fault = attr(&dir, "block_on_fault").map(|s| s == "1").unwrap_or(false);
    Ok(WqInfo {
        name: name.to_string(),
        device,
        mode,
        size,
        max_transfer_size,
        max_batch_size,
        block_on_fault,
        dev_path: dev_root.join(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs tree in a fresh directory under the target dir's temp space.
    fn fake_tree(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ce-dsa-sysfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let wq = |name: &str, attrs: &[(&str, &str)]| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            for (k, v) in attrs {
                std::fs::write(d.join(k), format!("{v}\n")).unwrap();
            }
        };
        wq("dsa0", &[("max_batch_size", "1024")]);
        let base = [("type", "user"), ("state", "enabled"), ("size", "128"), ("max_transfer_size", "2097152")];
        wq("wq0.0", &[&base[..], &[("mode", "dedicated"), ("block_on_fault", "1")]].concat());
        wq("wq0.1", &[&base[..], &[("mode", "shared"), ("max_batch_size", "32")]].concat());
        wq("wq0.2", &[("mode", "dedicated"), ("type", "kernel"), ("state", "enabled"), ("size", "16")]);
        wq("wq0.3", &[("mode", "shared"), ("type", "user"), ("state", "disabled"), ("size", "16")]);
        root
    }

    #[test]
    fn discovery_reads_mode_size_and_limits() {
        let root = fake_tree("read");
        let dev = Path::new(DEV_ROOT);
        let w = find_wq(&root, dev, "wq0.0").unwrap();
        assert_eq!(w.mode, WqMode::Dedicated);
        assert_eq!((w.size, w.max_transfer_size, w.max_batch_size), (128, 2 << 20, 1024), "batch size from dsa0");
        assert!(w.block_on_fault);
        assert_eq!(w.dev_path, Path::new("/dev/dsa/wq0.0"));
        let s = find_wq(&root, dev, "dsa0/wq0.1").unwrap();
        assert_eq!((s.mode, s.max_batch_size, s.block_on_fault), (WqMode::Shared, 32, false));
        let names: Vec<String> = list_wqs(&root, dev).into_iter().map(|w| w.name).collect();
        assert_eq!(names, ["wq0.0", "wq0.1"], "kernel and disabled WQs are not listed");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn unusable_or_missing_wqs_are_typed_errors() {
        let root = fake_tree("errors");
        let dev = Path::new(DEV_ROOT);
        let e = find_wq(&root, dev, "wq0.2").unwrap_err();
        assert!(matches!(e, DsaError::WqNotUsable { .. }) && e.to_string().contains("kernel"), "{e}");
        let e = find_wq(&root, dev, "wq0.3").unwrap_err();
        assert!(e.to_string().contains("disabled"), "{e}");
        match find_wq(&root, dev, "wq9.9").unwrap_err() {
            DsaError::NoSuchWq { available, .. } => assert_eq!(available, ["wq0.0", "wq0.1"]),
            e => panic!("{e}"),
        }
        let none = root.join("nothing-here");
        assert!(matches!(find_wq(&none, dev, "wq0.0"), Err(DsaError::NoSuchWq { .. })));
        let _ = std::fs::remove_dir_all(&root);
    }
}
