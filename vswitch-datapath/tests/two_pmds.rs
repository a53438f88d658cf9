//! Two PMD threads, each with its own copy channel and its own ports, forwarding between ports
//! they each own and across, through the lock-free cross-PMD rings: every packet arrives, in
//! order, with its payload intact (the traffic ports check sequence numbers and every byte).
//!
//! PMD 0 owns traffic ports A and C, PMD 1 owns B. C loops back to itself on PMD 0 (a local
//! link); A sends to B and B to A across the PMDs (a ring each way).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use copy_engine::{Channel, Policy};
use copy_engine_cpu::{WorkerConfig, WorkerEngine};
use vswitch_datapath::switch::cross_port::{CrossRxPort, CrossTxPort};
use vswitch_datapath::switch::xring::xring;
use vswitch_datapath::{PacketPool, Pmd, TrafficConfig, TrafficPort};

const PACKETS: u64 = 200_000;
const HANG: Duration = Duration::from_secs(120);

fn traffic(name: &str) -> TrafficPort {
    let cfg = TrafficConfig { min_len: 60, max_len: 1518, budget: Some(PACKETS), verify_payload: true };
    TrafficPort::new(name, cfg)
}

fn pmd() -> Pmd<WorkerEngine> {
    let engine = WorkerEngine::new(WorkerConfig::default()).unwrap();
    Pmd::new(Channel::new(engine, Policy::default()), PacketPool::new(1024, 2048))
}

fn received(pmd: &Pmd<WorkerEngine>, port: usize) -> u64 {
    pmd.port(port).as_any().downcast_ref::<TrafficPort>().unwrap().received()
}

#[test]
fn two_pmds_forward_between_their_own_ports_and_across_in_order() {
    let (to_b, from_a) = xring(256, 2048);
    let (to_a, from_b) = xring(256, 2048);
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let run = |pmd: &mut Pmd<WorkerEngine>, mine: &[usize]| {
        let mut finished = false;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                pmd.run_once();
            }
            if !finished && mine.iter().all(|&p| received(pmd, p) == PACKETS) {
                finished = true;
                done.fetch_add(1, Ordering::AcqRel);
            }
            assert!(start.elapsed() < HANG, "no progress: {:?}", pmd.port_stats());
        }
        pmd.stop();
        pmd.port_stats()
    };
    let (s0, s1) = std::thread::scope(|s| {
        let t0 = s.spawn(|| {
            let mut p = pmd();
            let a = p.add_port(Box::new(traffic("A")));
            let c = p.add_port(Box::new(traffic("C")));
            let tx = p.add_port(Box::new(CrossTxPort::new("to-pmd1", to_b)));
            let rx = p.add_port(Box::new(CrossRxPort::new("from-pmd1", from_b)));
            p.connect(a, tx);
            p.connect(rx, a);
            p.connect(c, c);
            let st = run(&mut p, &[a, c]);
            for port in [a, c] {
                let t = p.port(port).as_any().downcast_ref::<TrafficPort>().unwrap();
                assert_eq!(t.first_error(), None, "port {port} on PMD 0");
            }
            st
        });
        let t1 = s.spawn(|| {
            let mut p = pmd();
            let b = p.add_port(Box::new(traffic("B")));
            let tx = p.add_port(Box::new(CrossTxPort::new("to-pmd0", to_a)));
            let rx = p.add_port(Box::new(CrossRxPort::new("from-pmd0", from_a)));
            p.connect(b, tx);
            p.connect(rx, b);
            let st = run(&mut p, &[b]);
            let t = p.port(b).as_any().downcast_ref::<TrafficPort>().unwrap();
            assert_eq!(t.first_error(), None, "port B on PMD 1");
            st
        });
        while done.load(Ordering::Acquire) < 2 && !t0.is_finished() && !t1.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        (t0.join().unwrap(), t1.join().unwrap())
    });
    // Every packet each traffic port generated came back to it, checked; the rings moved exactly
    // the cross traffic.
    let get = |s: &[(String, vswitch_datapath::PortStats)], n: &str| s.iter().find(|(m, _)| m == n).unwrap().1;
    for (st, name) in [(&s0, "A"), (&s0, "C"), (&s1, "B")] {
        assert_eq!(get(st, name).rx_packets, PACKETS, "{name} generated");
        assert_eq!(get(st, name).tx_packets, PACKETS, "{name} got back");
    }
    assert_eq!(get(&s0, "to-pmd1").tx_packets, PACKETS);
    assert_eq!(get(&s1, "from-pmd0").rx_packets, PACKETS);
    assert_eq!(get(&s1, "to-pmd0").tx_packets, PACKETS);
    assert_eq!(get(&s0, "from-pmd1").rx_packets, PACKETS);
}
