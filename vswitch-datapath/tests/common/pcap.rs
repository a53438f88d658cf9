//! Test support: the classic pcap file format (not pcapng), enough to write the frames a test
//! replays through DPDK's pcap PMD and to read back what it captured.
//!
//! A file is a 24-byte global header (magic, version 2.4, time zone, accuracy, snap length,
//! link type) and then, per frame, a 16-byte record header (seconds, micro- or nanoseconds,
//! captured length, original length) and the captured bytes.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::path::Path;

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65535;

/// Writes `frames` as an Ethernet capture, one microsecond apart.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let total: usize = frames.iter().map(|f| 16 + f.len()).sum();
    let mut out = Vec::with_capacity(24 + total);
    out.extend_from_slice(&MAGIC_US.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&SNAPLEN.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len()).expect("frame length fits u32");
        out.extend_from_slice(&((i / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((i % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out)
}

/// Reads every frame of a capture (either byte order, micro- or nanosecond timestamps).
/// A truncated record (captured length below the original length, or a short file) is an
/// error: the tests compare whole frames.
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_pcap(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a capture held in memory; see [`read_pcap`].
pub fn parse_pcap(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if data.len() < 24 {
        return Err(format!("{} bytes: shorter than the 24-byte global header", data.len()));
    }
    let magic_le = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let big_endian = match magic_le {
        MAGIC_US | MAGIC_NS => false,
        m if m.swap_bytes() == MAGIC_US || m.swap_bytes() == MAGIC_NS => true,
        m => return Err(format!("bad magic {m:#010x}")),
    };
    let u32_at = |off: usize| -> u32 {
        let b: [u8; 4] = data[off..off + 4].try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let linktype = u32_at(20) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(format!("link type {linktype}, expected Ethernet (1)"));
    }
    let mut frames = Vec::new();
    let mut off = 24;
    while off < data.len() {
        if data.len() - off < 16 {
            return Err(format!("record {} header cut short at byte {off}", frames.len()));
        }
        let caplen = u32_at(off + 8) as usize;
        let origlen = u32_at(off + 12) as usize;
        off += 16;
        if caplen != origlen {
            return Err(format!("record {} truncated: {caplen} of {origlen} bytes", frames.len()));
        }
        if data.len() - off < caplen {
            return Err(format!("record {} data cut short at byte {off}", frames.len()));
        }
        frames.push(data[off..off + caplen].to_vec());
        off += caplen;
    }
    Ok(frames)
}

/// An Ethernet frame of `len` bytes (no FCS), unicast between two locally administered
/// addresses, EtherType 0x88B5 (local experimental), whose payload starts with `seq` and its
/// length and continues with bytes derived from `seq`, so no two frames are alike.
pub fn test_frame(seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 60, "frame shorter than the Ethernet minimum");
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(len as u32).to_be_bytes());
    // xorshift32, seeded per frame.
    let mut x = seq.wrapping_mul(0x9e37_79b9) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        for b in x.to_le_bytes() {
            if f.len() < len {
                f.push(b);
            }
        }
    }
    f
}

/// Compares captures frame by frame; `Err` names the first difference.
pub fn compare_frames(sent: &[Vec<u8>], received: &[Vec<u8>]) -> Result<(), String> {
    for (i, (s, r)) in sent.iter().zip(received).enumerate() {
        if s != r {
            let first = s.iter().zip(r).position(|(a, b)| a != b).unwrap_or(s.len().min(r.len()));
            let seq = |f: &[u8]| f.get(14..18).map(|b| u32::from_be_bytes(b.try_into().unwrap()));
            return Err(format!(
                "frame {i} differs: sent {} bytes (seq {:?}), received {} bytes (seq {:?}), \
                 first difference at byte {first}",
                s.len(),
                seq(s),
                r.len(),
                seq(r)
            ));
        }
    }
    if sent.len() != received.len() {
        return Err(format!("sent {} frames, received {}", sent.len(), received.len()));
    }
    Ok(())
}

#[test]
fn pcap_round_trips_through_writer_and_parser() {
    let dir = std::env::temp_dir().join(format!("ce-pcap-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let frames: Vec<Vec<u8>> =
        [60usize, 64, 1518, 9000].iter().enumerate().map(|(i, &l)| test_frame(i as u32, l)).collect();
    let p = dir.join("x.pcap");
    write_pcap(&p, &frames).unwrap();
    let back = read_pcap(&p).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(compare_frames(&frames, &back), Ok(()));
    assert_ne!(frames[0][14..], frames[1][14..60]);
}
