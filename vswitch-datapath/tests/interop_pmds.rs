//! Two PMD threads with the real driver: testpmd with two virtio-user ports on a `vswitch` with
//! `--pmd-cores 0,1`, port 0 on PMD 0 and port 1 on PMD 1, so every packet crosses between the
//! PMDs (each with its own worker engine) on the lock-free rings, both ways. What testpmd sent on
//! one port arrives on the other, less only what was in flight when it stopped; nothing arrives
//! that was not sent. Skipped when `dpdk-testpmd` is not installed, except in CI.

#[path = "common/testpmd.rs"]
mod testpmd;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testpmd::{have_testpmd, vswitch_binary, HarnessError, Process, Scratch, Testpmd, TestpmdConfig};

fn ok<T>(r: Result<T, HarnessError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn interop_two_pmds_forward_across_both_ways() {
    if !have_testpmd() {
        assert!(std::env::var_os("CI").is_none(), "dpdk-testpmd is missing in CI");
        eprintln!("skipped: dpdk-testpmd is not installed (scripts/test.sh installs it)");
        return;
    }
    let _serial = testpmd::machine_lock("interop", Duration::from_secs(600));
    let scratch = Scratch::new("pmds");
    let socks: Vec<PathBuf> = (0..2).map(|i| scratch.path(&format!("s{i}.sock"))).collect();
    let mut cmd = Command::new(ok(vswitch_binary()));
    for s in &socks {
        cmd.arg("--port").arg(format!("vhost-user:{}", s.display()));
    }
    cmd.args(["--engine", "worker", "--pmd-cores", "0,1", "--stats-interval", "1"]);
    let mut sw = ok(Process::spawn("vswitch(2 PMDs)", cmd));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socks.iter().all(|s| s.exists()) {
        assert!(sw.is_running() && Instant::now() < deadline, "the switch did not listen:\n{}", sw.output());
        thread::sleep(Duration::from_millis(20));
    }
    let mut t = ok(Testpmd::spawn(&TestpmdConfig::tx_first_through("pmds", &socks[0], &socks[1], 1)));
    let live = ok(t.wait_rx_on_every_port(10_000, Duration::from_secs(60)));
    eprintln!("testpmd while running: {live:?}");
    assert!(t.process().signal_and_wait(libc::SIGINT, Duration::from_secs(15)).is_some(), "testpmd stops");
    let fwd = t.forward_stats();
    assert_eq!(fwd.len(), 2, "{fwd:?}");
    let ((rx0, tx0), (rx1, tx1)) = ((fwd[0].rx_packets, fwd[0].tx_packets), (fwd[1].rx_packets, fwd[1].tx_packets));
    assert!(rx0 > 0 && rx1 > 0, "traffic both ways: {fwd:?}");
    // In flight at the stop: the guest rings (256 each), the switch's bursts and its ring (512).
    let in_flight = 2048;
    assert!(rx1 <= tx0 && tx0 - rx1 <= in_flight, "port 0 -> port 1: sent {tx0}, received {rx1}");
    assert!(rx0 <= tx1 && tx1 - rx0 <= in_flight, "port 1 -> port 0: sent {tx1}, received {rx0}");
    sw.signal(libc::SIGINT);
    assert!(sw.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "clean stop:\n{}", sw.output());
    let out = sw.stdout();
    assert!(out.contains("port 0 on pmd0") && out.contains("port 1 on pmd1"), "{out}");
    // Both PMDs moved packets through their rings.
    for ring in ["to-pmd1-port1", "to-pmd0-port0", "from-pmd0-port0", "from-pmd1-port1"] {
        let line = out.lines().rev().find(|l| l.trim_start().starts_with(&format!("{ring}:"))).unwrap();
        assert!(!line.contains("rx 0 pkts 0 bytes, tx 0 pkts"), "{line}");
    }
}
