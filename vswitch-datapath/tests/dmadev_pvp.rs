//! The PVP loop on DPDK's dma_skeleton dmadev: the same lossless, in-order, byte-exact round trip
//! as on the CPU engines. Needs the system DPDK: `cargo test -p vswitch-datapath --features dmadev
//! --test dmadev_pvp`. One EAL per process, so this is its own test binary.

#![cfg(feature = "dmadev")]

use std::time::{Duration, Instant};

use copy_engine::{Channel, Policy};
use copy_engine_dmadev::{DmadevEngine, EalBuilder};
use vswitch_datapath::loopguest::{LoopGuest, LoopGuestConfig};
use vswitch_datapath::{Northbound, Notifier, PacketPool, Pmd, Southbound, TrafficConfig, TrafficPort, VhostPort};

#[test]
fn random_sizes_round_trip_intact_on_dma_skeleton() {
    let eal = EalBuilder::skeleton().file_prefix(format!("ce-pvp-{}", std::process::id())).init().expect("EAL");
    let engine = DmadevEngine::open(&eal, "dma_skeleton0", 512).expect("dma_skeleton0");
    let gcfg = LoopGuestConfig { split_header: true, ..LoopGuestConfig::default() };
    let mut guest = LoopGuest::new(gcfg);
    let (rxq, txq) = guest.device_queues();
    let mut pmd = Pmd::new(Channel::new(engine, Policy::default()), PacketPool::new(512, 9216));
    let cfg = TrafficConfig { min_len: 64, max_len: 9000, budget: Some(2000), verify_payload: true };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(VhostPort::new(
        "vhost0",
        Northbound::new(rxq, 12, true, Notifier::Polling),
        Southbound::new(txq, 12, Notifier::Polling),
    )));
    pmd.connect(t, v);
    pmd.connect(v, t);
    let tp = |pmd: &Pmd<DmadevEngine>| pmd.port(t).as_any().downcast_ref::<TrafficPort>().unwrap().received();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tp(&pmd) < 2000 {
        assert!(Instant::now() < deadline, "stalled: {:?}", pmd.port_stats());
        pmd.run_once();
        guest.poll();
    }
    let sink = pmd.port(t).as_any().downcast_ref::<TrafficPort>().unwrap();
    assert_eq!(sink.first_error(), None);
    assert!(pmd.channel().stats().offloaded > 0, "copies went through dma_skeleton");
    pmd.stop();
}
