//! The vhost datapath on the DSA engine over its device model (feature `dsa`, on by default):
//! north/south round trips of random sizes byte-identical and in order, with the model's page
//! faults, device errors, failed batches and a busy shared WQ invisible to the guest, and the
//! binaries' `--engine dsa:<wq>` refused with a clear error where there is no DSA.

#![cfg(feature = "dsa")]

use std::time::{Duration, Instant};

use copy_engine::fault::{FaultConfig, FaultEngine};
use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_dsa::{BatchPolicy, DsaConfig, DsaEngine, ModelConfig, ModelFaults, ModelPortal, WqMode};
use vswitch_datapath::loopguest::{LoopGuest, LoopGuestConfig};
use vswitch_datapath::{Northbound, Notifier, PacketPool, Pmd, Southbound, TrafficConfig, TrafficPort, VhostPort};

const HDR: usize = 12;

fn traffic(pmd: &Pmd<impl CopyEngine>, port: usize) -> &TrafficPort {
    pmd.port(port).as_any().downcast_ref::<TrafficPort>().expect("traffic port")
}

/// `packets` packets of `min..=max` bytes through traffic -> guest -> traffic; the sink checks
/// every sequence number and payload.
fn pvp<E: CopyEngine>(chan: Channel<E>, min: usize, max: usize, packets: u64) -> Pmd<E> {
    let gcfg = LoopGuestConfig { split_header: true, ..LoopGuestConfig::default() };
    let mut guest = LoopGuest::new(gcfg);
    let (rxq, txq) = guest.device_queues();
    let mut pmd = Pmd::new(chan, PacketPool::new(512, max.max(2048)));
    let cfg = TrafficConfig { min_len: min, max_len: max, budget: Some(packets), verify_payload: true };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(VhostPort::new(
        "vhost0",
        Northbound::new(rxq, HDR, true, Notifier::Polling),
        Southbound::new(txq, HDR, Notifier::Polling),
    )));
    pmd.connect(t, v);
    pmd.connect(v, t);
    let deadline = Instant::now() + Duration::from_secs(120);
    while traffic(&pmd, t).received() < packets && traffic(&pmd, t).first_error().is_none() {
        assert!(Instant::now() < deadline, "PVP loop stalled: {:?}", pmd.port_stats());
        pmd.run_once();
        guest.poll();
    }
    let tp = traffic(&pmd, t);
    assert_eq!(tp.first_error(), None, "sink saw a lost, reordered or corrupt packet");
    assert_eq!(tp.received(), packets);
    assert_eq!(guest.bad_headers(), 0);
    let vs = pmd.port(v).stats();
    assert_eq!((vs.drops, vs.errors), (0, 0), "vhost port dropped or failed: {vs:?}");
    pmd.stop();
    assert_eq!(pmd.channel().in_flight(), 0);
    assert_eq!(pmd.pool().available(), pmd.pool().capacity(), "packet buffers leaked");
    pmd
}

fn model(m: ModelConfig, cfg: DsaConfig) -> DsaEngine<ModelPortal> {
    DsaEngine::model(m, cfg).expect("DSA model")
}

#[test]
fn random_sizes_round_trip_intact_on_the_dsa_model() {
    let e = model(ModelConfig::default(), DsaConfig { ring_size: 512, ..DsaConfig::default() });
    let pmd = pvp(Channel::new(e, Policy::default()), 64, 9000, 3000);
    let s = pmd.channel().stats();
    assert!(s.offloaded > 0 && s.cpu_small > 0, "both engine and CPU paths used: {s:?}");
    let (d, c) = pmd.channel().with_engine(|e| (e.dsa_stats(), e.model_handle().counters()));
    assert!(d.batches > 0, "bursts went as batch descriptors: {d:?}");
    assert_eq!((c.violations, c.dropped), (0, 0), "{c:?}");
}

#[test]
fn dsa_page_faults_errors_and_failed_batches_change_nothing_the_guest_sees() {
    let faults = ModelFaults { page_fault: 0.05, error: 0.01, batch_error: 0.02, busy: 0.05, seed: 77 };
    let m = ModelConfig { mode: WqMode::Shared, wq_size: 16, faults, ..ModelConfig::default() };
    let cfg = DsaConfig { ring_size: 256, batch: BatchPolicy { min_batch: 4, max_batch: 32 }, ..DsaConfig::default() };
    let pmd = pvp(Channel::new(model(m, cfg), Policy::offload_all()), 64, 9000, 3000);
    let s = pmd.channel().stats();
    let (d, c) = pmd.channel().with_engine(|e| (e.dsa_stats(), e.model_handle().counters()));
    assert!(c.page_faults > 0 && c.errors > 0 && c.busy > 0, "nothing injected: {c:?}");
    assert_eq!(d.page_faults, c.page_faults, "every page fault finished by the CPU");
    assert!(s.errors >= c.errors, "device errors reached the policy layer: {s:?} {c:?}");
    assert_eq!(s.cpu_retry, s.errors, "every failed copy redone by the CPU");
    assert_eq!((c.violations, c.dropped), (0, 0), "{c:?}");
}

#[test]
fn dsa_model_under_injected_ring_full_keeps_packet_order() {
    let faults = ModelFaults { page_fault: 0.02, seed: 5, ..ModelFaults::default() };
    let m = ModelConfig { wq_size: 8, faults, ..ModelConfig::default() };
    let inner = model(m, DsaConfig { ring_size: 128, ..DsaConfig::default() });
    let fcfg =
        FaultConfig { ring_full_every: 40, ring_full_burst: 6, delay_polls: 1, seed: 3, ..FaultConfig::default() };
    let pmd = pvp(Channel::new(FaultEngine::new(inner, fcfg), Policy::default()), 64, 4000, 2000);
    let injected = pmd.channel().with_engine(|f| f.injected());
    assert!(injected.ring_full > 0);
    assert!(pmd.channel().stats().cpu_ring_full >= injected.ring_full);
}

#[test]
fn binaries_refuse_a_dsa_wq_that_is_not_there_with_a_clear_error() {
    use std::process::{Command, Stdio};
    if std::path::Path::new("/dev/dsa").exists() {
        return; // a machine with DSA: the WQ may well be there
    }
    let sock = std::env::temp_dir().join(format!("vs-dsa-{}.sock", std::process::id()));
    let port = format!("vhost-user:{}", sock.display());
    for (bin, args) in [
        (env!("CARGO_BIN_EXE_pvp"), vec!["--engine", "dsa:wq0.0", "--duration", "1"]),
        (env!("CARGO_BIN_EXE_vswitch"), vec!["--port", &port, "--engine", "dsa:wq0.0", "--duration", "1"]),
    ] {
        let out = Command::new(bin).args(&args).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
        assert!(err.contains("wq0.0") && !err.contains("panicked"), "{bin}: {err}");
    }
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn pvp_demo_runs_on_the_dsa_model() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pvp"))
        .args(["--engine", "dsa:model", "--duration", "1", "--size", "64-1518"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("dsa:model"), "{stdout}");
}
