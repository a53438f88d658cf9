//! Interop smoke tests with the real driver: DPDK's `dpdk-testpmd` with two virtio-user ports,
//! each connected to a vhost-user socket of our `vswitch` binary, which cross-connects them. What
//! testpmd sends on port 0 must arrive on port 1 and vice versa; a testpmd killed mid-traffic and
//! started again must get traffic flowing again without restarting the switch.
//!
//! `cargo test -p vswitch-datapath -- interop` selects them. They are skipped (with a note) when
//! `dpdk-testpmd` is not installed, except in CI, where that fails them. They use the harness in
//! `common/testpmd.rs` (as `interop_pcap.rs` does): every process they start is killed on drop,
//! every wait is bounded, socket paths and EAL file prefixes are unique per test, and they run
//! one at a time, also across concurrent test runs on the machine.

#[path = "common/testpmd.rs"]
mod testpmd;

use std::time::Duration;

use testpmd::{have_testpmd, HarnessError, Scratch, Switch, Testpmd, TestpmdConfig};

/// One testpmd at a time (each wants both of a 2-core machine's cores), within this test binary
/// and across test runs: the lock `interop_pcap.rs` takes too.
fn serial() -> std::fs::File {
    testpmd::machine_lock("interop", Duration::from_secs(600))
}

fn ok<T>(r: Result<T, HarnessError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The switch under test: the `vswitch` binary with the worker engine.
fn start_vswitch(scratch: &Scratch) -> Switch {
    Switch::vswitch(scratch, "worker").unwrap_or_else(|e| panic!("cannot start the switch under test: {e}"))
}

/// testpmd on both switch ports with `queues` queue pairs each, circulating `--tx-first` bursts.
fn start_testpmd(name: &str, sw: &Switch, queues: u16) -> Testpmd {
    ok(Testpmd::spawn(&TestpmdConfig::tx_first_through(name, sw.socket(0), sw.socket(1), queues)))
}

/// Waits until testpmd reports at least 10000 packets received on both ports; returns the stats.
fn wait_for_traffic(t: &mut Testpmd) -> Vec<testpmd::PortStats> {
    let s = ok(t.wait_rx_on_every_port(10_000, Duration::from_secs(30)));
    assert_eq!(s.len(), 2, "{s:?}");
    s
}

/// Runs testpmd with `queues` queue pairs through the switch until both ports received 10000
/// packets and stops it (SIGINT: it prints its forward statistics). Checks that traffic went
/// both ways and that what one port sent arrived on the other, less what was still in flight at
/// the stop (rings and bursts: at most `in_flight` packets); nothing arrives that was not sent.
/// Returns the stopped testpmd.
fn cross_traffic(name: &str, sw: &Switch, queues: u16, in_flight: u64) -> Testpmd {
    let mut testpmd = start_testpmd(name, sw, queues);
    let live = wait_for_traffic(&mut testpmd);
    eprintln!("testpmd while running: {live:?}");
    let st = testpmd.process().signal_and_wait(libc::SIGINT, Duration::from_secs(15));
    assert!(st.is_some(), "testpmd did not stop");
    let fwd = testpmd.forward_stats();
    eprintln!("testpmd forward stats: {fwd:?}");
    assert_eq!(fwd.len(), 2, "testpmd printed forward stats for both ports");
    let ((rx0, tx0), (rx1, tx1)) = ((fwd[0].rx_packets, fwd[0].tx_packets), (fwd[1].rx_packets, fwd[1].tx_packets));
    assert!(tx0 > 0 && tx1 > 0 && rx0 > 0 && rx1 > 0, "traffic both ways: {fwd:?}");
    assert!(rx1 <= tx0 && tx0 - rx1 <= in_flight, "port 0 -> port 1: sent {tx0}, received {rx1}");
    assert!(rx0 <= tx1 && tx1 - rx0 <= in_flight, "port 1 -> port 0: sent {tx1}, received {rx0}");
    testpmd
}

/// Sends `sig` (named `sig_name`) to the switch and checks that it exits cleanly.
fn stop_cleanly(sw: &mut Switch, sig: libc::c_int, sig_name: &str) {
    let st = sw.signal_and_wait(sig, Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "vswitch exits cleanly on {sig_name}: {st:?}");
}

#[test]
fn interop_testpmd_packets_cross_the_switch_both_ways() {
    if !have_testpmd() {
        return;
    }
    let _one_at_a_time = serial();
    let scratch = Scratch::new("interop");
    let mut sw = start_vswitch(&scratch);
    cross_traffic("interop", &sw, 1, 4096);
    stop_cleanly(&mut sw, libc::SIGINT, "SIGINT");
    assert!(!sw.socket(0).exists() && !sw.socket(1).exists(), "sockets removed at exit");
    let out = sw.output();
    assert!(out.contains("vswitch: stopped"), "{out}");
}

#[test]
fn interop_testpmd_killed_mid_traffic_and_restarted_gets_traffic_again() {
    if !have_testpmd() {
        return;
    }
    let _one_at_a_time = serial();
    let scratch = Scratch::new("interop-restart");
    let mut sw = start_vswitch(&scratch);
    let mut first = start_testpmd("interop-1", &sw, 1);
    wait_for_traffic(&mut first);
    // A crash: no GET_VRING_BASE, the sockets just close while copies are in flight. The switch
    // clears the queues, unmaps the memory and listens again.
    first.kill();
    let mut second = start_testpmd("interop-2", &sw, 1);
    let s = wait_for_traffic(&mut second);
    eprintln!("second testpmd: {s:?}");
    assert!(second.process().signal_and_wait(libc::SIGINT, Duration::from_secs(15)).is_some());
    assert!(sw.is_running(), "the switch survived the frontend's crash");
    stop_cleanly(&mut sw, libc::SIGTERM, "SIGTERM");
}

/// testpmd with two queue pairs on each virtio-user port: the control queue, `--rxq`/`--txq` 2,
/// and flows that differ so that the switch spreads them over the pairs; one forwarding lcore
/// serves every queue.
#[test]
fn interop_testpmd_two_queue_pairs_cross_the_switch() {
    if !have_testpmd() {
        return;
    }
    let _one_at_a_time = serial();
    let scratch = Scratch::new("interop-mq");
    let mut sw = start_vswitch(&scratch);
    let testpmd = cross_traffic("interop-mq", &sw, 2, 8192);
    let streams = testpmd.stream_stats();
    eprintln!("testpmd per-stream forward stats: {streams:?}");
    // Each stream receives on one (port, queue) and sends on the other port's same queue: every
    // queue of both ports received traffic through the switch, so the switch served both queue
    // pairs of both ports, both ways.
    for port in 0..2 {
        for queue in 0..2 {
            let got = streams.iter().find(|s| (s.rx_port, s.rx_queue) == (port, queue)).map_or(0, |s| s.rx_packets);
            assert!(got >= 1000, "port {port} queue {queue} received {got}: {streams:?}");
        }
    }
    stop_cleanly(&mut sw, libc::SIGINT, "SIGINT");
    let out = sw.output();
    assert!(out.contains("vswitch: stopped"), "{out}");
}
