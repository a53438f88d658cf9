//! The MAC table of an L2 switch: which port a source MAC was last seen on, forgotten after an
//! aging time.
//!
//! A fixed number of entries, allocated once: the table is set-associative, buckets of
//! [`WAYS`] entries chosen by a hash of the MAC, so a lookup or a learn touches one bucket (one
//! cache line) and never allocates. When a bucket is full, the entry seen least recently makes
//! room (counted as an eviction). An entry older than the aging time is treated as absent and its
//! slot is reused. Time is the caller's (milliseconds on any monotonic clock), so the table runs
//! on the PMD thread without a clock call per packet, and tests choose the time. This module owns
//! the table only; it must not know ports, packets or threads.

/// A MAC address.
pub type Mac = [u8; 6];

/// Entries per bucket.
pub const WAYS: usize = 4;

/// The broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

/// Whether `mac` is a group (multicast or broadcast) address: the I/G bit of its first octet.
#[inline]
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// No port: an empty slot.
const EMPTY: u16 = u16::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    mac: Mac,
    port: u16,
    seen_ms: u64,
}

const FREE: Slot = Slot { mac: [0; 6], port: EMPTY, seen_ms: 0 };

/// What [`MacTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// The MAC was known on this port: its age is reset.
    Refreshed,
    /// The MAC was known on another port (a guest moved): it now points here.
    Moved {
        /// The port it was on.
        from: u16,
    },
    /// A group address is never learned as a source.
    Ignored,
}

/// One live entry, for the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacEntry {
    /// The MAC.
    pub mac: Mac,
    /// The port it was last seen on as a source.
    pub port: u16,
    /// Milliseconds since it was last seen.
    pub age_ms: u64,
}

/// Counters of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacTableStats {
    /// New entries.
    pub learned: u64,
    /// MACs that moved to another port.
    pub moves: u64,
    /// Live entries that made room for a new MAC in a full bucket.
    pub evictions: u64,
    /// Lookups that found the MAC.
    pub hits: u64,
    /// Lookups that did not (unknown or aged out).
    pub misses: u64,
}

/// A fixed-capacity MAC table with aging.
#[derive(Debug)]
pub struct MacTable {
    buckets: Box<[[Slot; WAYS]]>,
    aging_ms: u64,
    stats: MacTableStats,
}

impl MacTable {
    /// A table of at least `entries` entries (rounded up to a multiple of [`WAYS`]); an entry not
    /// refreshed for `aging_ms` milliseconds is forgotten.
    pub fn new(entries: usize, aging_ms: u64) -> Self {
        let n = entries.max(1).div_ceil(WAYS);
        MacTable { buckets: vec![[FREE; WAYS]; n].into_boxed_slice(), aging_ms, stats: MacTableStats::default() }
    }

    /// Entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// The aging time in milliseconds.
    pub fn aging_ms(&self) -> u64 {
        self.aging_ms
    }

    /// The counters.
    pub fn stats(&self) -> MacTableStats {
        self.stats
    }

    #[inline]
    fn bucket(&self, mac: &Mac) -> usize {
        let mut k = [0u8; 8];
        k[..6].copy_from_slice(mac);
        // The splitmix64 finalizer: every input bit reaches every output bit (guests' MACs often
        // differ in their last octet only).
        let mut h = u64::from_le_bytes(k);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        (h % self.buckets.len() as u64) as usize
    }

    #[inline]
    fn live(&self, s: &Slot, now_ms: u64) -> bool {
        s.port != EMPTY && now_ms.saturating_sub(s.seen_ms) < self.aging_ms
    }

    /// Records that `mac` was seen as a source on `port` at `now_ms`.
    pub fn learn(&mut self, mac: Mac, port: u16, now_ms: u64) -> Learned {
        if is_group(&mac) || port == EMPTY {
            return Learned::Ignored;
        }
        let b = self.bucket(&mac);
        let aging = self.aging_ms;
        let bucket = &mut self.buckets[b];
        let live = |s: &Slot| s.port != EMPTY && now_ms.saturating_sub(s.seen_ms) < aging;
        if let Some(s) = bucket.iter_mut().find(|s| s.port != EMPTY && s.mac == mac) {
            let was = (live(s), s.port);
            s.seen_ms = now_ms;
            s.port = port;
            return match was {
                (true, p) if p == port => Learned::Refreshed,
                (true, from) => {
                    self.stats.moves += 1;
                    Learned::Moved { from }
                }
                (false, _) => {
                    self.stats.learned += 1;
                    Learned::New
                }
            };
        }
        let slot = match bucket.iter().position(|s| !live(s)) {
            Some(i) => i,
            None => {
                self.stats.evictions += 1;
                (0..WAYS).min_by_key(|&i| bucket[i].seen_ms).unwrap_or(0)
            }
        };
        bucket[slot] = Slot { mac, port, seen_ms: now_ms };
        self.stats.learned += 1;
        Learned::New
    }

    /// The port `mac` was last seen on, unless it aged out.
    #[inline]
    pub fn lookup(&mut self, mac: &Mac, now_ms: u64) -> Option<u16> {
        let b = self.bucket(mac);
        let found = self.buckets[b].iter().find(|s| s.mac == *mac && self.live(s, now_ms)).map(|s| s.port);
        match found {
            Some(_) => self.stats.hits += 1,
            None => self.stats.misses += 1,
        }
        found
    }

    /// Forgets every MAC on `port` (the port went away). Returns how many.
    pub fn flush_port(&mut self, port: u16) -> usize {
        let mut n = 0;
        for s in self.buckets.iter_mut().flatten() {
            if s.port == port {
                *s = FREE;
                n += 1;
            }
        }
        n
    }

    /// The live entries, in table order.
    pub fn entries(&self, now_ms: u64) -> Vec<MacEntry> {
        self.buckets
            .iter()
            .flatten()
            .filter(|s| self.live(s, now_ms))
            .map(|s| MacEntry { mac: s.mac, port: s.port, age_ms: now_ms.saturating_sub(s.seen_ms) })
            .collect()
    }

    /// How many entries are live.
    pub fn len(&self, now_ms: u64) -> usize {
        self.buckets.iter().flatten().filter(|s| self.live(s, now_ms)).count()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.len(now_ms) == 0
    }
}

/// `mac` as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        [0x52, 0x54, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn a_learned_mac_is_found_on_its_port_and_unknown_ones_are_not() {
        let mut t = MacTable::new(16, 1000);
        assert_eq!(t.learn(mac(1), 3, 0), Learned::New);
        assert_eq!(t.learn(mac(1), 3, 10), Learned::Refreshed);
        assert_eq!(t.lookup(&mac(1), 20), Some(3));
        assert_eq!(t.lookup(&mac(2), 20), None);
        assert_eq!((t.stats().hits, t.stats().misses, t.stats().learned), (1, 1, 1));
    }

    #[test]
    fn an_entry_ages_out_unless_refreshed() {
        let mut t = MacTable::new(16, 1000);
        t.learn(mac(1), 0, 0);
        t.learn(mac(2), 1, 0);
        t.learn(mac(2), 1, 900); // refreshed
        assert_eq!(t.lookup(&mac(1), 999), Some(0));
        assert_eq!(t.lookup(&mac(1), 1000), None, "aged out after exactly the aging time");
        assert_eq!(t.lookup(&mac(2), 1500), Some(1));
        assert_eq!(t.entries(1500), [MacEntry { mac: mac(2), port: 1, age_ms: 600 }]);
        // Seen again after aging out: a new entry.
        assert_eq!(t.learn(mac(1), 4, 2000), Learned::New);
        assert_eq!(t.lookup(&mac(1), 2000), Some(4));
    }

    #[test]
    fn a_mac_seen_on_another_port_moves_there() {
        let mut t = MacTable::new(16, 1000);
        t.learn(mac(7), 0, 0);
        assert_eq!(t.learn(mac(7), 2, 5), Learned::Moved { from: 0 });
        assert_eq!(t.lookup(&mac(7), 6), Some(2));
        assert_eq!(t.len(6), 1);
        assert_eq!(t.stats().moves, 1);
    }

    #[test]
    fn the_table_never_holds_more_than_its_capacity_and_keeps_recent_macs() {
        let mut t = MacTable::new(10, u64::MAX);
        assert_eq!(t.capacity(), 12);
        for i in 0..1000 {
            t.learn(mac(i), (i % 3) as u16, i as u64);
        }
        assert!(t.len(1000) <= t.capacity());
        assert!(t.stats().evictions >= 1000 - 12);
        // The last MAC learned was never the least recently seen of its bucket.
        assert_eq!(t.lookup(&mac(999), 1000), Some(0));
        // Every MAC the table still answers for points at the port it was learned on.
        for e in t.entries(1000) {
            let i = u32::from_be_bytes([e.mac[2], e.mac[3], e.mac[4], e.mac[5]]);
            assert_eq!(e.port, (i % 3) as u16);
        }
    }

    #[test]
    fn group_addresses_are_never_learned() {
        let mut t = MacTable::new(8, 1000);
        assert_eq!(t.learn(BROADCAST, 0, 0), Learned::Ignored);
        assert_eq!(t.learn([0x01, 0, 0x5e, 0, 0, 1], 0, 0), Learned::Ignored);
        assert!(t.is_empty(0));
        assert!(is_group(&BROADCAST) && !is_group(&mac(1)));
    }

    #[test]
    fn flushing_a_port_forgets_only_its_macs() {
        let mut t = MacTable::new(256, 1000);
        for i in 0..20 {
            t.learn(mac(i), (i % 2) as u16, 0);
        }
        assert_eq!(t.len(0), 20, "20 MACs in 256 entries: no bucket overflows");
        assert_eq!(t.flush_port(1), 10);
        assert!(t.entries(0).iter().all(|e| e.port == 0));
        assert_eq!(t.len(0), 10);
        assert_eq!(format_mac(&mac(0x0a0b0c0d)), "52:54:0a:0b:0c:0d");
    }
}
