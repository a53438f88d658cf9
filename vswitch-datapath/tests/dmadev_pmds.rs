//! Two PMD threads, each with its own dmadev (DPDK's dma_skeleton: two vdevs, one per PMD, the
//! seed's "add PMD thread = add DMA resource"): traffic crosses between them both ways through a
//! guest on each, every byte and the order checked. And the `vswitch` binary with `--engine
//! dmadev:dma_skeleton0,dma_skeleton1 --pmd-cores 0,1` runs and stops cleanly, one device per PMD.
//! Needs the system DPDK: `cargo test -p vswitch-datapath --features dmadev --test dmadev_pmds`.
//! One EAL per process, so this is its own test binary.

#![cfg(feature = "dmadev")]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use copy_engine::{Channel, Policy};
use copy_engine_dmadev::{DmadevEngine, EalBuilder};
use vswitch_datapath::loopguest::{LoopGuest, LoopGuestConfig};
use vswitch_datapath::switch::cross_port::{CrossRxPort, CrossTxPort};
use vswitch_datapath::switch::xring::{xring, XConsumer, XProducer};
use vswitch_datapath::{Northbound, Notifier, PacketPool, Pmd, Southbound, TrafficConfig, TrafficPort, VhostPort};

const PACKETS: u64 = 2000;

/// What one PMD thread ran: packets its traffic port got back, its first error, copies its own
/// dmadev did, and the name of that dmadev.
#[derive(Debug)]
struct Outcome {
    received: u64,
    error: Option<vswitch_datapath::TrafficError>,
    offloaded: u64,
    looped: u64,
}

/// PMD `k`: a traffic port whose packets go to the other PMD's guest and come back, and a guest
/// of its own that loops what the other PMD's traffic port sends. Rings: `out` to the other PMD
/// (traffic out, then the guest's replies), `inp` from it.
fn pmd(
    engine: DmadevEngine,
    k: usize,
    to_other: [XProducer; 2],
    from_other: [XConsumer; 2],
    done: &AtomicUsize,
) -> Outcome {
    let [to_guest, to_traffic] = to_other;
    let [from_traffic, from_guest] = from_other;
    let mut guest = LoopGuest::new(LoopGuestConfig { split_header: true, ..LoopGuestConfig::default() });
    let (rxq, txq) = guest.device_queues();
    let mut pmd = Pmd::new(
        Channel::new(engine, Policy::default().with_cpu_below(0).with_adaptive(None)),
        PacketPool::new(1024, 9216),
    );
    let cfg = TrafficConfig { min_len: 64, max_len: 9000, budget: Some(PACKETS), verify_payload: true };
    let t = pmd.add_port(Box::new(TrafficPort::new(format!("traffic{k}"), cfg)));
    let v = pmd.add_port(Box::new(VhostPort::new(
        format!("vhost{k}"),
        Northbound::new(rxq, 12, true, Notifier::Polling),
        Southbound::new(txq, 12, Notifier::Polling),
    )));
    // traffic -> other PMD's guest -> back here -> traffic; other PMD's traffic -> guest -> back.
    let out_t = pmd.add_port(Box::new(CrossTxPort::new("to-guest", to_guest)));
    let back_t = pmd.add_port(Box::new(CrossRxPort::new("from-guest", from_guest)));
    let in_v = pmd.add_port(Box::new(CrossRxPort::new("from-traffic", from_traffic)));
    let out_v = pmd.add_port(Box::new(CrossTxPort::new("to-traffic", to_traffic)));
    pmd.connect(t, out_t);
    pmd.connect(back_t, t);
    pmd.connect(in_v, v);
    pmd.connect(v, out_v);
    let received = |pmd: &Pmd<DmadevEngine>| pmd.port(t).as_any().downcast_ref::<TrafficPort>().unwrap().received();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Both directions run through this PMD's guest: it keeps looping until both PMDs' traffic
    // came back.
    let mut mine = false;
    while done.load(Ordering::Acquire) < 2 {
        assert!(Instant::now() < deadline, "pmd{k} stalled: {:?}", pmd.port_stats());
        pmd.run_once();
        guest.poll();
        if !mine && received(&pmd) >= PACKETS {
            mine = true;
            done.fetch_add(1, Ordering::AcqRel);
        }
    }
    // A last few rounds: nothing more may arrive (a duplicate would be counted).
    for _ in 0..1000 {
        pmd.run_once();
        guest.poll();
    }
    let tp = pmd.port(t).as_any().downcast_ref::<TrafficPort>().unwrap();
    let out = Outcome {
        received: tp.received(),
        error: tp.first_error(),
        offloaded: pmd.channel().stats().offloaded,
        looped: guest.looped(),
    };
    pmd.stop();
    out
}

#[test]
fn two_pmds_each_on_its_own_dma_skeleton_forward_both_ways_intact_and_in_order() {
    let eal = EalBuilder::skeleton()
        .vdev("dma_skeleton1")
        .file_prefix(format!("ce-pmds-{}", std::process::id()))
        .init()
        .expect("EAL");
    let e0 = DmadevEngine::open(&eal, "dma_skeleton0", 512).expect("dma_skeleton0");
    let e1 = DmadevEngine::open(&eal, "dma_skeleton1", 512).expect("dma_skeleton1");
    // Four rings: per direction of each PMD's traffic, out and back.
    let (p0_to_g1, g1_from_p0) = xring(512, 9216);
    let (g1_to_p0, p0_from_g1) = xring(512, 9216);
    let (p1_to_g0, g0_from_p1) = xring(512, 9216);
    let (g0_to_p1, p1_from_g0) = xring(512, 9216);
    let done = AtomicUsize::new(0);
    let (a, b) = std::thread::scope(|s| {
        let done = &done;
        let a = s.spawn(move || pmd(e0, 0, [p0_to_g1, g0_to_p1], [g0_from_p1, p0_from_g1], done));
        let b = s.spawn(move || pmd(e1, 1, [p1_to_g0, g1_to_p0], [g1_from_p0, p1_from_g0], done));
        (a.join().expect("pmd0"), b.join().expect("pmd1"))
    });
    eprintln!("pmd0: {a:?}\npmd1: {b:?}");
    for (k, o) in [(0, &a), (1, &b)] {
        assert_eq!(o.error, None, "pmd{k}: every packet back intact and in order");
        assert_eq!(o.received, PACKETS, "pmd{k}: every packet came back, once");
        assert_eq!(o.looped, PACKETS, "pmd{k}'s guest looped every packet of the other PMD");
        assert!(o.offloaded >= 2 * PACKETS, "pmd{k}: its guest's copies went through its own dmadev: {o:?}");
    }
    drop(eal);
}

#[test]
fn vswitch_runs_one_dmadev_per_pmd_and_refuses_too_few() {
    let bin = env!("CARGO_BIN_EXE_vswitch");
    let prefix = format!("ce-vswitch-pmds-{}", std::process::id());
    let out = Command::new(bin)
        .args(["--port", "source:64", "--port", "sink", "--port", "sink", "--port", "source:64"])
        .args(["--engine", "dmadev:dma_skeleton0,dma_skeleton1", "--pmd-cores", "0,1"])
        .args(["--eal-args"])
        .arg(format!(
            "--no-huge --no-pci -m 256 --file-prefix={prefix} --no-telemetry --vdev=dma_skeleton0 --vdev=dma_skeleton1"
        ))
        .args(["--duration", "2", "--stats-interval", "0"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("engine dmadev dma_skeleton0,dma_skeleton1 (one per PMD), 2 PMD threads"), "{stdout}");
    // Each PMD forwarded its source to a sink across the other PMD's ring.
    for k in 0..2 {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with(&format!("pmd{k} t=")))
            .unwrap_or_else(|| panic!("no stats line of pmd{k}: {stdout}"));
        assert!(!line.contains(" 0 forwarded"), "pmd{k}: {line}");
    }
    let out = Command::new(bin)
        .args(["--port", "sink", "--engine", "dmadev:dma_skeleton0", "--pmd-cores", "0,1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 device(s) for 2 PMD(s)"));
}
