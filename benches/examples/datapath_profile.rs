//! A fixed amount of datapath work for profilers (callgrind, perf): one vhost port with the
//! in-process loop guest, one direction, one packet size, the memcpy engine, single-threaded and
//! deterministic (the guest refills its ring completely between PMD polls, so every burst is
//! full and the instruction count per packet is the same from run to run).
//!
//! `cargo run --release -p copy-engine-benches --example datapath_profile -- north 64 1000000`
//! `valgrind --tool=callgrind target/release/examples/datapath_profile south 64 200000`
//! `target/release/examples/datapath_profile north 1518 1000000 worker` (the worker engine; its
//! thread runs beside this one, so the run is no longer deterministic)
//! `DATAPATH_PROFILE_PACKED=1 target/release/examples/datapath_profile south 64 200000`: the
//! guest's queues are packed rings (VIRTIO 1.1) instead of split ones
//! `valgrind --tool=callgrind target/release/examples/datapath_profile north 9000 20000`: jumbo
//! frames (northbound, up to 9216 B), each spanning several of the guest's 2 KB mergeable buffers
//!
//! Prints packets, wall time and ns per packet (including the guest's share: this is a profile
//! target, not the benchmark; `cargo bench --bench datapath` is), then the channel's and the
//! vhost queues' counters.

use std::time::Instant;

use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::loopguest::{GuestMode, LoopGuest, LoopGuestConfig};
use vswitch_datapath::{
    Northbound, Notifier, PacketPool, Pmd, RingFeatures, SinkPort, Southbound, TrafficConfig, TrafficPort, VhostPort,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: datapath_profile north|south <packet bytes> <packets> [memcpy|worker]";
    let (Some(dir), Some(size), Some(packets)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let north = match dir.as_str() {
        "north" => true,
        "south" => false,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let (Ok(size), Ok(packets)) = (size.parse::<usize>(), packets.parse::<u64>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    // Northbound a packet may span several of the guest's 2 KB mergeable buffers (jumbo frames);
    // the guest's TX chains are one buffer each.
    let largest = if north { 9216 } else { 1518 };
    if !(60..=largest).contains(&size) {
        eprintln!("packet bytes: 60..={largest} ({dir})");
        std::process::exit(2);
    }
    match args.get(4).map(String::as_str) {
        None | Some("memcpy") => profile(MemcpyEngine::default(), north, size, packets),
        Some("worker") => {
            profile(WorkerEngine::new(WorkerConfig::default()).expect("worker engine"), north, size, packets)
        }
        Some(_) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

/// Moves `packets` packets of `size` bytes one way through a vhost port on `engine`.
fn profile<E: CopyEngine>(engine: E, north: bool, size: usize, packets: u64) {
    let mode = if north { GuestMode::RxSink } else { GuestMode::TxSource(size as u32) };
    let packed = std::env::var_os("DATAPATH_PROFILE_PACKED").is_some_and(|v| v == "1");
    let base = LoopGuestConfig::default();
    let features = if packed { base.features | RingFeatures::PACKED } else { base.features };
    let mut guest = LoopGuest::new(LoopGuestConfig { mode, features, ..base });
    let (rxq, txq) = guest.device_queues();
    let vhost = VhostPort::new(
        "vhost0",
        Northbound::new(rxq, 12, true, Notifier::Polling),
        Southbound::new(txq, 12, Notifier::Polling),
    );
    // Packet buffers hold the packet whole (jumbo frames span several 2 KB guest buffers).
    let mut pmd = Pmd::new(Channel::new(engine, Policy::default()), PacketPool::new(1024, size.max(2048)));
    let v = pmd.add_port(Box::new(vhost));
    let counted = if north {
        let cfg = TrafficConfig { verify_payload: false, ..TrafficConfig::fixed(size) };
        let t = pmd.add_port(Box::new(TrafficPort::new("source", cfg)));
        pmd.connect(t, v);
        v
    } else {
        let s = pmd.add_port(Box::new(SinkPort::new("sink")));
        pmd.connect(v, s);
        s
    };
    let done = |pmd: &Pmd<E>| {
        if north {
            pmd.port(counted).queue_stats().expect("vhost").0.packets
        } else {
            pmd.port(counted).stats().tx_packets
        }
    };
    let t0 = Instant::now();
    while done(&pmd) < packets {
        pmd.run_once();
        guest.poll();
    }
    let dt = t0.elapsed();
    let n = done(&pmd);
    let (rx, tx) = pmd.port(v).queue_stats().expect("vhost");
    assert_eq!(rx.broken + tx.broken, 0, "a queue broke: the profile measured an error path");
    println!(
        "{}{} {size} B: {n} packets in {:.3} s, {:.1} ns/packet (PMD and guest together)",
        if north { "north" } else { "south" },
        if packed { " (packed)" } else { "" },
        dt.as_secs_f64(),
        dt.as_nanos() as f64 / n as f64
    );
    println!("channel: {:?}", pmd.channel().stats());
    println!("north (guest rx): {rx:?}\nsouth (guest tx): {tx:?}");
}
