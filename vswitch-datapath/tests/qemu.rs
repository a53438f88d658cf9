//! Real guests: two Linux VMs under QEMU (TCG) whose virtio-net devices are the two vhost-user
//! ports of the `vswitch` binary, which cross-connects them. The server (10.0.0.2) stays up and
//! serves TCP ports; the client (10.0.0.1) runs the scenario's steps and reports each result on
//! its console (see scripts/qemu/guest-init); the harness (common/qemu.rs) parses the reports and
//! checks them: every measured ping answered, IP fragmentation where the size needs it and none
//! where the MTU holds it, the bulk transfers' sha256 equal on both sides, both directions.
//!
//! - `qemu_pings_bulk_*`: pings at 56, 1400 and 8000 B, 8 MiB each way; at MTU 9000 (device
//!   `host_mtu=9000,mrg_rxbuf=on`) 8000 and 8972 B pings unfragmented; with two queue pairs,
//!   traffic on every queue of both guests;
//! - `qemu_lifecycle_*`: a client QEMU SIGKILLed mid-traffic, a new one on the same socket, a
//!   driver reload (rmmod/insmod virtio_net) and 3 reboots of it, pings and a bulk transfer
//!   after each, while the switch and the server stay up;
//! - `qemu_one_of_two_pairs_enabled_*`: two pairs offered, one enabled by the driver.
//!
//! Loss: each scenario first pings until the peer answers (`wait`: the peer's boot, ARP), which
//! is not counted; every measured ping after it must be answered (0 % loss, no slack): on a
//! switch that neither drops nor reorders, nothing else can lose a ping.
//!
//! Engines and queues: memcpy and worker, one queue pair (QEMU's default) and two (`queues=2` on
//! the netdev, `mq=on` on the device, both channels enabled in the guest). `cargo test -p
//! vswitch-datapath --test qemu` runs them all, one at a time (each boots two VMs on a 2-core
//! machine; the lock is the one the testpmd interop tests take). Skipped with a note when QEMU,
//! a kernel package, busybox, cpio or a C compiler is missing, except in CI (`$CI` set), where
//! that fails them: scripts/test.sh installs them.
//!
//! Each test prints a `QEMU-RESULT` line (boot time, loss, MiB/s) on stderr:
//! `cargo test -p vswitch-datapath --test qemu -- --nocapture` shows them.

#[path = "common/qemu.rs"]
mod qemu;
#[path = "common/testpmd.rs"]
mod testpmd;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use qemu::{have_qemu, Bed, End, GuestConfig, Record};
use vswitch_datapath::vhost_port::flow_hash;

/// Time for a client's steps (boot included); TCG guests on 2 busy cores are slow.
const STEPS_TIMEOUT: Duration = Duration::from_secs(300);
const SERVER: usize = 0;

/// One scenario at a time: within this binary (a mutex) and across test runs on the machine
/// (the flock the interop tests take: they pin busy-polling processes to the same cores).
fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = std::time::Instant::now();
    let file = testpmd::machine_lock("interop", Duration::from_secs(1800));
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!("waited {:.0} s for the machine lock (another test run holds it)", t.elapsed().as_secs_f64());
    }
    Serial { _file: file, _guard: guard }
}

struct Serial {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

/// A scenario's switch and guest set-up.
#[derive(Clone, Copy, Debug)]
struct Case {
    engine: &'static str,
    /// Queue pairs per port (netdev `queues`; with 2, `mq=on` and 2 channels in the guests).
    queues: u16,
    /// eth0's MTU in both guests; above 1500 the device also gets `host_mtu` and `mrg_rxbuf=on`.
    mtu: u32,
    /// Packed virtqueues on both guests' devices (`packed=on`).
    packed: bool,
}

impl Case {
    fn name(&self, scenario: &str) -> String {
        let mut engine = self.engine.split_whitespace();
        format!(
            "qemu_{scenario}_{}{}_{}q{}{}",
            engine.next().unwrap_or_default(),
            if engine.any(|w| w == "--pmd-cores") { "_2pmds" } else { "" },
            self.queues,
            if self.mtu > 1500 { "_mtu9000" } else { "" },
            if self.packed { "_packed" } else { "" }
        )
    }

    fn apply(&self, c: &mut GuestConfig) {
        c.queues = self.queues;
        if self.queues > 1 {
            c.channels = Some(self.queues);
        }
        c.mtu = self.mtu;
        c.packed = self.packed;
        if self.mtu > 1500 {
            c.host_mtu = Some(self.mtu);
            c.mrg_rxbuf = Some(true);
        }
    }

    fn server(&self, bed: &Bed) -> GuestConfig {
        let mut c = GuestConfig::server("server", &bed.socket(1));
        self.apply(&mut c);
        if self.queues > 1 {
            // Its per-queue counters, for the check that both of its RX queues got traffic.
            c.stats_secs = 2;
        }
        c
    }

    fn client(&self, bed: &Bed, name: &str, steps: &[String]) -> GuestConfig {
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        let mut c = GuestConfig::client(name, &bed.socket(0), &steps);
        self.apply(&mut c);
        c
    }
}

/// A frame of `proto` from (`src_mac`, `src`) to (`dst_mac`, `dst`), as far as the switch's flow
/// hash reads it.
fn frame(dst_mac: u8, src_mac: u8, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 34];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, dst_mac]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, src_mac]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = proto;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f
}

/// A second client address whose pings and replies the switch puts on the other queue pair
/// than those of 10.0.0.1, at both guests (the switch spreads a port's packets over its pairs by
/// `flow_hash`, the same for every packet of a flow): pinging from both addresses gives every
/// RX queue of both guests traffic.
fn alias_on_the_other_pair(queues: u16) -> String {
    let q = |f: Vec<u8>| flow_hash(&f) % queues as u32;
    let (client, server) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let to_client = |c: [u8; 4]| q(frame(1, 2, 1, server, c));
    let to_server = |c: [u8; 4]| q(frame(2, 1, 1, c, server));
    (10..=250u8)
        .map(|i| [10, 0, 0, i])
        .find(|&a| to_client(a) != to_client(client) && to_server(a) != to_server(client))
        .map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]))
        .expect("an address on the other pair at both ports")
}

/// The ping steps: 56, 1400 and 8000 bytes (8000 needs fragments at MTU 1500; at 9000 also
/// 8972, the largest unfragmented).
fn ping_steps(case: &Case, count: u32, src: Option<&str>) -> Vec<String> {
    let mut sizes = vec![56, 1400, 8000];
    if case.mtu >= 9000 {
        sizes.push(8972);
    }
    sizes
        .iter()
        .map(|s| {
            let n = if *s >= 8000 { count / 2 } else { count };
            match src {
                Some(a) => format!("ping:{s}:{n}:{a}"),
                None => format!("ping:{s}:{n}"),
            }
        })
        .collect()
}

/// Checks every `ping` record: all sent, all answered; fragments (FragCreates > 0 and each reply
/// reassembled) exactly when the packet exceeds the MTU. Returns (pings, worst loss %).
fn check_pings(bed: &Bed, recs: &[Record], mtu: u32, min_records: usize) -> (u64, f64) {
    let pings: Vec<&Record> = recs.iter().filter(|r| r.kind == "ping").collect();
    bed.check(pings.len() >= min_records, || format!("expected {min_records} ping reports, got {}", pings.len()));
    let mut total = 0;
    let mut worst: f64 = 0.0;
    for r in pings {
        let (Some(size), Some(count), Some(sent), Some(received), Some(loss), Some(frag), Some(reasm)) = (
            r.int("size"),
            r.int("count"),
            r.int("sent"),
            r.int("received"),
            r.num("loss"),
            r.int("fragcreates"),
            r.int("reasmoks"),
        ) else {
            bed.fail(&format!("unparsable ping report: {}", r.line));
        };
        worst = worst.max(loss);
        total += received;
        bed.check(sent == count && received == count && loss == 0.0, || {
            format!("ping lost packets (0 % loss required after the warm-up): {}", r.line)
        });
        if size + 28 > mtu as u64 {
            bed.check(frag > 0 && reasm == received, || {
                format!("{size}-byte pings at MTU {mtu} must be fragmented and each reply reassembled: {}", r.line)
            });
        } else {
            bed.check(frag == 0 && reasm == 0, || {
                format!("{size}-byte pings at MTU {mtu} must not fragment: {}", r.line)
            });
        }
    }
    (total, worst)
}

/// The client's `bulk-tx` (if any) must match the next `bulk-rx` of the server after console
/// offset `server_from`, and its `bulk-get` (if any) the file the server generated at boot.
/// Returns (tx MiB/s, get MiB/s) as the client timed them.
fn check_bulk(bed: &mut Bed, recs: &[Record], server_from: usize) -> (Option<f64>, Option<f64>) {
    let mut tx = None;
    let mut get = None;
    if let Some(t) = recs.iter().find(|r| r.kind == "bulk-tx") {
        let rx = bed.wait_record(SERVER, server_from, "bulk-rx", Duration::from_secs(60));
        bed.check(t.int("bytes").is_some_and(|b| b > 0) && t.get("bytes") == rx.get("bytes"), || {
            format!("bulk client -> server: sent {:?} bytes, received {:?}", t.get("bytes"), rx.get("bytes"))
        });
        bed.check(t.get("sha256").is_some() && t.get("sha256") == rx.get("sha256"), || {
            format!("bulk client -> server: sha256 differs: sent {}, received {}", t.line, rx.line)
        });
        tx = t.num("mibps");
    }
    if let Some(g) = recs.iter().find(|r| r.kind == "bulk-get") {
        let srv = bed.guests[SERVER].records().into_iter().find(|r| r.kind == "bulk-srv");
        let Some(srv) = srv else { bed.fail("the server did not report its bulk file") };
        bed.check(g.int("bytes").is_some_and(|b| b > 0) && g.get("bytes") == srv.get("bytes"), || {
            format!(
                "bulk server -> client: server sent {:?} bytes, client received {:?}",
                srv.get("bytes"),
                g.get("bytes")
            )
        });
        bed.check(g.get("sha256") == srv.get("sha256"), || {
            format!("bulk server -> client: sha256 differs: server {}, client {}", srv.line, g.line)
        });
        get = g.num("mibps");
    }
    (tx, get)
}

/// The `link` records must show the configured MTU, queue count and, where asked, mergeable
/// buffers negotiated.
fn check_links(bed: &Bed, who: &str, recs: &[Record], case: &Case) {
    let links: Vec<&Record> = recs.iter().filter(|r| r.kind == "link").collect();
    bed.check(!links.is_empty(), || format!("{who}: no link report"));
    for l in links {
        let feature = |bit: usize| l.get("features").and_then(|f| f.as_bytes().get(bit).copied()) == Some(b'1');
        bed.check(l.int("mtu") == Some(case.mtu as u64), || format!("{who}: MTU {} expected: {}", case.mtu, l.line));
        bed.check(l.int("rxq") == Some(case.queues as u64) && l.int("txq") == Some(case.queues as u64), || {
            format!("{who}: {} queue pairs expected in the guest: {}", case.queues, l.line)
        });
        // VIRTIO_NET_F_MQ (22), VIRTIO_NET_F_MRG_RXBUF (15).
        bed.check(feature(22) == (case.queues > 1), || format!("{who}: VIRTIO_NET_F_MQ negotiated? {}", l.line));
        if case.mtu > 1500 {
            bed.check(feature(15), || format!("{who}: VIRTIO_NET_F_MRG_RXBUF not negotiated: {}", l.line));
        }
    }
}

/// A guest's last `stats` record (the driver's counters) at or after `from`, as numbers.
fn last_stats(recs: &[Record]) -> Option<std::collections::BTreeMap<String, u64>> {
    let r = recs.iter().rev().find(|r| r.kind == "stats")?;
    Some(r.fields.iter().filter_map(|(k, v)| Some((k.clone(), v.parse().ok()?))).collect())
}

fn queue_counts(stats: &std::collections::BTreeMap<String, u64>, dir: &str, queues: u16) -> Vec<u64> {
    (0..queues).map(|q| stats.get(&format!("{dir}_queue_{q}_packets")).copied().unwrap_or(0)).collect()
}

/// Starts the server (guest 0); its boot is awaited with the client's.
fn start_server(bed: &mut Bed, case: &Case) -> usize {
    let cfg = case.server(bed);
    let i = bed.start(&cfg);
    assert_eq!(i, SERVER);
    i
}

/// Prints what the switch said besides its stats (for the record: a passing test shows it too).
fn print_switch_events(bed: &Bed) {
    let ev = bed.switch_events();
    if ev.is_empty() {
        eprintln!("  switch: nothing printed besides its stats");
    } else {
        eprintln!("  switch printed {} other line(s):\n    {}", ev.len(), ev.join("\n    "));
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Scenarios 1-4: pings at 56, 1400 and 8000 B (and 8972 at MTU 9000), bulk TCP both ways
/// (8 MiB, sha256 on both sides). With two pairs: the client transmits on each of its TX queues
/// in turn (XPS) and pings from a second address too, so that every RX and TX queue of the
/// client and every RX queue of the server must have carried traffic.
fn pings_and_bulk(case: Case) {
    if !have_qemu() {
        return;
    }
    let _one_at_a_time = serial();
    let name = case.name("pings_bulk");
    let mut bed = Bed::new_traced(&name, case.engine, case.packed);
    start_server(&mut bed, &case);
    let mut steps = vec!["wait".to_owned()];
    let alias = (case.queues > 1).then(|| alias_on_the_other_pair(case.queues));
    if let Some(a) = &alias {
        steps.push("xps:0".into());
        steps.extend(ping_steps(&case, 20, None));
        steps.push("xps:1".into());
        steps.extend(ping_steps(&case, 20, Some(a)));
        steps.push("xps:off".into());
    } else {
        steps.extend(ping_steps(&case, 20, None));
    }
    steps.extend(["bulk".into(), "get".into(), "stats".into()]);
    let mut cfg = case.client(&bed, "client", &steps);
    cfg.alias = alias.clone();
    let client = bed.start(&cfg);
    bed.wait_boots(&[SERVER, client]);
    let recs = bed.wait_done(client, 0, STEPS_TIMEOUT);
    let server_recs = bed.guests[SERVER].records();
    check_links(&bed, "client", &recs, &case);
    check_links(&bed, "server", &server_recs, &case);
    let n_sizes = ping_steps(&case, 20, None).len();
    let (pings, loss) = check_pings(&bed, &recs, case.mtu, n_sizes * if alias.is_some() { 2 } else { 1 });
    let (tx, get) = check_bulk(&mut bed, &recs, 0);
    let mut queues_note = String::new();
    if case.queues > 1 {
        let Some(cs) = last_stats(&recs) else { bed.fail("the client printed no driver statistics") };
        // A server stats line printed after the client is done holds every packet it got.
        let from = bed.guests[SERVER].console_len();
        bed.wait_record(SERVER, from, "stats", Duration::from_secs(30));
        let ss = last_stats(&bed.guests[SERVER].records_after(from)).expect("a stats record");
        let (c_rx, c_tx, s_rx, s_tx) = (
            queue_counts(&cs, "rx", case.queues),
            queue_counts(&cs, "tx", case.queues),
            queue_counts(&ss, "rx", case.queues),
            queue_counts(&ss, "tx", case.queues),
        );
        queues_note = format!(
            "; packets per queue: client rx {c_rx:?} tx {c_tx:?}, server rx {s_rx:?} tx {s_tx:?} (alias {alias:?})"
        );
        // Each RX queue gets at least one source address's replies (client) or requests
        // (server); each client TX queue one source's requests (more with fragments). With
        // several PMDs a PMD sends to a guest through the pair it owns itself, so which client RX
        // queue gets a reply follows the server's TX queue, which the server's kernel picks by
        // its own (per-boot random) hash, not the switch: there the client's RX queues together
        // must hold both sources' replies.
        let min: u64 =
            ping_steps(&case, 20, None).iter().filter_map(|s| s.split(':').nth(2)?.parse::<u64>().ok()).sum();
        let client_rx_ok = if case.engine.contains("--pmd-cores") {
            c_rx.iter().sum::<u64>() >= 2 * min
        } else {
            c_rx.iter().all(|&n| n >= min)
        };
        bed.check(client_rx_ok && s_rx.iter().all(|&n| n >= min) && c_tx.iter().all(|&n| n >= min), || {
            format!("every queue pair must carry traffic (>= {min} packets){queues_note}")
        });
    }
    bed.assert_switch_running();
    check_packed(&bed, &case);
    eprintln!(
        "QEMU-RESULT {name}: boot (to first VSTEST line) server {:.1} s, client {:.1} s; {pings} pings, worst loss \
         {loss}%; bulk client->server {} MiB/s, server->client {} MiB/s; client done after {:.1} s{queues_note}",
        bed.guests[SERVER].boot_secs().unwrap_or(f64::NAN),
        bed.guests[client].boot_secs().unwrap_or(f64::NAN),
        fmt_opt(tx),
        fmt_opt(get),
        bed.elapsed(),
    );
    print_switch_events(&bed);
}

/// With packed rings, every feature negotiation the switch saw (each boot, each driver reload)
/// acked VIRTIO_F_RING_PACKED: the traffic really went over packed rings.
fn check_packed(bed: &Bed, case: &Case) {
    if !case.packed {
        return;
    }
    let acked = bed.switch.acked_features();
    bed.check(acked.len() >= 2 && acked.iter().all(|f| f & (1 << 34) != 0), || {
        format!("every guest must ack VIRTIO_F_RING_PACKED: {acked:x?}")
    });
}

/// The ping steps of one lifecycle boot: fewer and smaller counts than [`ping_steps`].
fn short_pings(count: u32) -> Vec<String> {
    vec![format!("ping:56:{count}"), format!("ping:1400:{count}"), format!("ping:8000:{}", count / 2)]
}

/// Scenarios 5-7 on one switch and one server that stay up throughout:
///
/// 1. client-1's QEMU is SIGKILLed while it streams to the server (the switch's stats show
///    traffic from it at that moment: the crash lands mid-traffic, with copies in flight);
/// 2. client-2, a new QEMU on the same socket, must then ping with 0 % loss and send a file that
///    arrives intact; then it unloads virtio_net (the device is reset: GET_VRING_BASE, and a new
///    feature negotiation and rings at the reload), loads it again, and must ping again;
/// 3. it reboots (`reboot -f`: QEMU resets the machine) and does all of 2. again on each boot,
///    [`LIFECYCLE_BOOTS`] boots in all.
fn lifecycle(case: Case) {
    if !have_qemu() {
        return;
    }
    let _one_at_a_time = serial();
    let name = case.name("lifecycle");
    let mut bed = Bed::new_traced(&name, case.engine, case.packed);
    start_server(&mut bed, &case);
    let steps = ["wait".to_owned(), "ping:56:5".into(), "stream:4096".into()];
    let first = bed.start(&case.client(&bed, "client-1", &steps));
    bed.wait_boots(&[SERVER, first]);
    bed.wait_record(first, 0, "stream-start", STEPS_TIMEOUT);
    let from = bed.switch.output().len();
    let busy = bed.wait_switch_rx(0, from, 100.0, Duration::from_secs(60));
    bed.kill(first);
    let killed_at = bed.elapsed();
    // The switch notices the socket closing, drains, and listens for the next frontend.
    std::thread::sleep(Duration::from_millis(500));
    bed.assert_switch_running();

    let mut steps = vec!["wait".to_owned()];
    steps.extend(short_pings(10));
    steps.extend(["bulk".into(), "reload".into(), "wait".into()]);
    steps.extend(short_pings(10));
    let mut cfg = case.client(&bed, "client-2", &steps);
    cfg.end = End::Reboot;
    let mut server_from = bed.guests[SERVER].console_len();
    let second = bed.start(&cfg);
    bed.wait_boots(&[second]);
    let mut from = 0;
    let mut per_boot = Vec::new();
    for boot in 1..=LIFECYCLE_BOOTS {
        let recs = bed.wait_done(second, from, STEPS_TIMEOUT);
        let what = format!("client-2 boot {boot}");
        let boots = recs.iter().filter(|r| r.kind == "boot").count();
        bed.check(boots == 1, || format!("{what}: expected one boot report, got {boots}"));
        let Some(reloaded) = recs.iter().position(|r| r.kind == "reloaded") else {
            bed.fail(&format!("{what}: no driver reload report"))
        };
        let links = recs.iter().filter(|r| r.kind == "link").count();
        bed.check(links == 2, || format!("{what}: two link reports expected (boot, reload), got {links}"));
        check_links(&bed, &what, &recs, &case);
        let (before, _) = check_pings(&bed, &recs[..reloaded], case.mtu, 3);
        let (after, _) = check_pings(&bed, &recs[reloaded..], case.mtu, 3);
        let (tx, _) = check_bulk(&mut bed, &recs[..reloaded], server_from);
        let up = recs.first().and_then(|r| r.num("uptime")).unwrap_or(f64::NAN);
        per_boot
            .push(format!("boot {boot} (kernel up at {up:.1} s): {before}+{after} pings, bulk {} MiB/s", fmt_opt(tx)));
        from = recs.last().map_or(from, |r| r.end);
        server_from = bed.guests[SERVER].console_len();
    }
    bed.kill(second);
    bed.assert_switch_running();
    check_packed(&bed, &case);
    eprintln!(
        "QEMU-RESULT {name}: client-1 SIGKILLed at {killed_at:.1} s while the switch saw {:.0} pps from it; \
         client-2 booted in {:.1} s; {}; every ping answered, every bulk checksum equal; {:.1} s in all",
        busy.rx_pps,
        bed.guests[second].boot_secs().unwrap_or(f64::NAN),
        per_boot.join("; "),
        bed.elapsed()
    );
    print_switch_events(&bed);
}

/// Boots of client-2 in [`lifecycle`] (so this many minus one reboots).
const LIFECYCLE_BOOTS: usize = 4;

/// Two queue pairs on the netdev, but the guests keep the driver's default of one channel (one
/// vCPU): QEMU disables the second pair (SET_VRING_ENABLE 0), so the switch must send on the
/// first only. Pings from two addresses (whose flows would hash to both pairs) and a bulk
/// transfer must all arrive.
fn two_pairs_one_enabled(engine: &'static str) {
    if !have_qemu() {
        return;
    }
    let _one_at_a_time = serial();
    let case = Case { engine, queues: 2, mtu: 1500, packed: false };
    let name = case.name("one_of_two_pairs_enabled");
    let mut bed = Bed::new(&name, engine);
    let mut srv = case.server(&bed);
    srv.channels = None;
    srv.stats_secs = 0;
    bed.start(&srv);
    let alias = alias_on_the_other_pair(2);
    let mut steps = vec!["wait".to_owned()];
    steps.extend(ping_steps(&case, 20, None));
    steps.extend(ping_steps(&case, 20, Some(&alias)));
    steps.push("bulk".into());
    let mut cfg = case.client(&bed, "client", &steps);
    cfg.channels = None;
    cfg.alias = Some(alias);
    let client = bed.start(&cfg);
    bed.wait_boots(&[SERVER, client]);
    let recs = bed.wait_done(client, 0, STEPS_TIMEOUT);
    for r in recs.iter().filter(|r| r.kind == "link") {
        bed.check(r.int("rxq") == Some(1), || format!("the driver should enable one pair with one vCPU: {}", r.line));
    }
    let (pings, loss) = check_pings(&bed, &recs, 1500, 6);
    let (tx, _) = check_bulk(&mut bed, &recs, 0);
    bed.assert_switch_running();
    eprintln!("QEMU-RESULT {name}: {pings} pings, worst loss {loss}%, bulk {} MiB/s", fmt_opt(tx));
    print_switch_events(&bed);
}

macro_rules! matrix {
    ($scenario:ident: $($test:ident => $engine:literal, $queues:literal, $mtu:literal;)*) => {
        $(
            #[test]
            fn $test() {
                $scenario(Case { engine: $engine, queues: $queues, mtu: $mtu, packed: false });
            }
        )*
    };
}

matrix! { pings_and_bulk:
    qemu_pings_bulk_memcpy_1q => "memcpy", 1, 1500;
    qemu_pings_bulk_worker_1q => "worker", 1, 1500;
    qemu_pings_bulk_memcpy_2q => "memcpy", 2, 1500;
    qemu_pings_bulk_worker_2q => "worker", 2, 1500;
    qemu_pings_bulk_memcpy_1q_mtu9000 => "memcpy", 1, 9000;
    qemu_pings_bulk_worker_2q_mtu9000 => "worker", 2, 9000;
}

matrix! { lifecycle:
    qemu_lifecycle_memcpy_1q => "memcpy", 1, 1500;
    qemu_lifecycle_worker_1q => "worker", 1, 1500;
    qemu_lifecycle_memcpy_2q => "memcpy", 2, 1500;
    qemu_lifecycle_worker_2q => "worker", 2, 1500;
}

/// Two PMDs (`--pmd-cores 0,1`, `--queue-pairs 2`): each guest's two queue pairs on different
/// PMDs (pair j of port i on PMD (i + j) % 2), so the client's TX queue 0 reaches the server over
/// PMD 0 and its TX queue 1 over PMD 1. Pings and bulk both ways, nothing lost, every queue used.
#[test]
fn qemu_pings_bulk_memcpy_2q_2pmds() {
    pings_and_bulk(Case { engine: "memcpy --pmd-cores 0,1 --queue-pairs 2", queues: 2, mtu: 1500, packed: false });
}

// Packed virtqueues (VIRTIO 1.1, `packed=on`): the Linux driver's packed ring against ours.

#[test]
fn qemu_pings_bulk_worker_1q_packed() {
    pings_and_bulk(Case { engine: "worker", queues: 1, mtu: 1500, packed: true });
}

#[test]
fn qemu_pings_bulk_memcpy_2q_mtu9000_packed() {
    pings_and_bulk(Case { engine: "memcpy", queues: 2, mtu: 9000, packed: true });
}

/// Kill/restart, driver reloads (GET_VRING_BASE with the wrap counters, new rings) and reboots.
#[test]
fn qemu_lifecycle_worker_1q_packed() {
    lifecycle(Case { engine: "worker", queues: 1, mtu: 1500, packed: true });
}

#[test]
fn qemu_one_of_two_pairs_enabled_memcpy() {
    two_pairs_one_enabled("memcpy");
}

/// The harness's own parsers, without QEMU.
#[test]
fn qemu_harness_parses_reports_and_switch_stats() {
    let text = "noise\r\nVSTEST ping size=56 count=3 sent=3 received=3 loss=0% rtt=1/2/3 fragcreates=0 reasmoks=0\r\n\
                [ 1.0] kernel says VSTEST done uptime=1.5\nVSTEST partial";
    let r = qemu::parse_records(text, 0);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].kind, "ping");
    assert_eq!(r[0].int("received"), Some(3));
    assert_eq!(r[0].num("loss"), Some(0.0));
    assert_eq!(r[1].kind, "done");
    assert_eq!(qemu::parse_records(text, r[0].end).len(), 1);
    let sw = "t=1.0s  copies: 1 offloaded, 2 by CPU, 0 in flight\n  vhost0: attached  rx 975 pkts 1296250 bytes, \
              tx 303 pkts 73274 bytes, drops 4, pushed back 0, in flight 0, copies offloaded 973 cpu 608, rx 193 pps, \
              tx 59 pps\n";
    let s = qemu::parse_switch_stats(sw, 0);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].port.as_str(), s[0].state.as_str()), ("vhost0", "attached"));
    assert_eq!((s[0].rx_packets, s[0].tx_packets, s[0].drops), (975, 303, 4));
    assert_eq!((s[0].rx_pps, s[0].tx_pps), (193.0, 59.0));
    // The alias really lands on the other pair at both ports.
    let a: Vec<u8> = alias_on_the_other_pair(2).split('.').map(|x| x.parse().unwrap()).collect();
    let a = [a[0], a[1], a[2], a[3]];
    let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    assert_ne!(flow_hash(&frame(1, 2, 1, s, a)) % 2, flow_hash(&frame(1, 2, 1, s, c)) % 2);
    assert_ne!(flow_hash(&frame(2, 1, 1, a, s)) % 2, flow_hash(&frame(2, 1, 1, c, s)) % 2);
}
