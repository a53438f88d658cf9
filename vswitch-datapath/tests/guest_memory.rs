//! Guest memory: translation is checked (overflow, unmapped, across regions), copies are
//! all-or-nothing and refuse foreign segments, and every kind of region maps the same bytes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vswitch_datapath::testguest::TestGuest;
use vswitch_datapath::{GuestMemory, GuestRegion, HostSeg, MemoryConfigError, MemoryError, RegionHint};

type Segs = Vec<HostSeg>;

#[test]
fn translation_checks_overflow_and_unmapped_ranges() {
    let g = TestGuest::split();
    let mem = g.memory();
    let mut h = RegionHint::default();
    let mut out = Segs::new();
    assert_eq!(
        mem.translate(u64::MAX - 10, 100, &mut h, &mut out),
        Err(MemoryError::Overflow { addr: u64::MAX - 10, len: 100 })
    );
    assert_eq!(mem.translate(0x10, 1, &mut h, &mut out), Err(MemoryError::Unmapped { addr: 0x10 }));
    let end = {
        let r = mem.regions().last().unwrap();
        r.guest_addr() + r.len() as u64
    };
    mem.translate(0x10_0000, 8, &mut h, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(mem.translate(end - 4, 8, &mut h, &mut out), Err(MemoryError::Unmapped { addr: end }));
    assert_eq!(out.len(), 1, "a failed translation leaves the output as it was");
    mem.translate(end - 4, 4, &mut h, &mut out).unwrap();
    mem.translate(g.boundary() - 1, 2, &mut h, &mut out).unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!((out[2].len(), out[3].len()), (1, 1));
}

#[test]
fn copies_are_all_or_nothing_and_refuse_foreign_segments() {
    let g = TestGuest::split();
    let other = TestGuest::new();
    let mem = g.memory();
    let mut h = RegionHint::default();
    let mut segs = Segs::new();
    let b = g.boundary();
    mem.translate(b - 3, 6, &mut h, &mut segs).unwrap();
    assert_eq!(segs.len(), 2);
    mem.scatter(&[1, 2, 3, 4, 5, 6], &segs).unwrap();
    assert_eq!(g.read(b - 3, 6), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(mem.scatter(&[9; 7], &segs), Err(MemoryError::Short { have: 6, need: 7 }));
    assert_eq!(g.read(b - 3, 6), vec![1, 2, 3, 4, 5, 6], "nothing written");
    assert_eq!(other.memory().gather(&segs, &mut [0; 6]), Err(MemoryError::ForeignSegment));
    assert_eq!(other.memory().scatter(&[0; 6], &segs), Err(MemoryError::ForeignSegment));
    let end = b + (2 << 20);
    assert_eq!(mem.write(end - 2, &[7; 4]), Err(MemoryError::Unmapped { addr: end }));
    assert_eq!(g.read(end - 2, 2), vec![0, 0], "a failing write leaves memory untouched");
    assert_eq!(mem.load_u16_acquire(b - 1), Err(MemoryError::NotContiguous { addr: b - 1 }));
}

#[test]
fn overlapping_or_empty_region_sets_are_refused() {
    let a = GuestRegion::anonymous(0x1000, 0x2000).unwrap();
    let b = GuestRegion::anonymous(0x2000, 0x1000).unwrap();
    assert!(matches!(GuestMemory::new(vec![a, b]), Err(MemoryConfigError::Overlap { .. })));
    assert!(matches!(GuestMemory::new(vec![]), Err(MemoryConfigError::Empty)));
    assert!(matches!(GuestRegion::anonymous(u64::MAX - 0xfff, 0x2000), Err(MemoryConfigError::Overflow { .. })));
}

#[test]
fn fd_region_maps_the_file_at_an_unaligned_offset() {
    let path = std::env::temp_dir().join(format!("vswitch-datapath-fd-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(3 * 4096).unwrap();
    f.seek(SeekFrom::Start(4096 + 100)).unwrap();
    f.write_all(b"hello").unwrap();
    let r = GuestRegion::from_fd(0x8000_0000, 8192, f.as_fd(), 4096 + 100).unwrap();
    let mem = GuestMemory::new(vec![r]).unwrap();
    let mut buf = [0; 5];
    mem.read(0x8000_0000, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    mem.write(0x8000_0000 + 5, b" world").unwrap();
    let mut s = String::new();
    f.seek(SeekFrom::Start(4096 + 100)).unwrap();
    f.take(11).read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world", "writes land in the shared file");
}

#[test]
fn vm_memory_regions_are_shared_not_copied() {
    let vm =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)]).unwrap();
    let mem = GuestMemory::from_vm_memory(&vm).unwrap();
    assert_eq!(mem.regions().len(), 2);
    mem.write(0xfffe, &[1, 2, 3, 4]).unwrap();
    let mut got = [0u8; 4];
    vm.read_slice(&mut got, GuestAddress(0xfffe)).unwrap();
    assert_eq!(got, [1, 2, 3, 4]);
}
