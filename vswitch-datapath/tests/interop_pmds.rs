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
    // Whole ports on one PMD each (every queue pair of port i on PMD i): every packet crosses.
    cmd.args(["--port-pmd", "0:0", "--port-pmd", "1:1"]);
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

/// One control request to the switch, its answer as JSON.
fn ctl(path: &std::path::Path, line: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a).unwrap();
    serde_json::from_str(&a).unwrap_or_else(|e| panic!("{line}: {e}: {a:?}"))
}

/// Queue pairs, not ports, on PMDs: two virtio-user ports of two queue pairs each, `--queue-pairs
/// 2` and round robin, so port 0's pair 0 and port 1's pair 1 are on PMD 0 and the two others on
/// PMD 1 (pair j of port i on PMD (i + j) % 2). testpmd forwards each queue to the same queue of
/// its other port, so every packet alternates between the PMDs. Each PMD holds a shard of both
/// ports with its own pair attached, and each shard carried traffic both ways; what testpmd sent
/// on one port arrived on the other, less what was in flight at the stop.
#[test]
fn interop_two_queue_pairs_of_a_port_on_two_pmds_carry_traffic_both_ways() {
    if !have_testpmd() {
        assert!(std::env::var_os("CI").is_none(), "dpdk-testpmd is missing in CI");
        eprintln!("skipped: dpdk-testpmd is not installed (scripts/test.sh installs it)");
        return;
    }
    let _serial = testpmd::machine_lock("interop", Duration::from_secs(600));
    let scratch = Scratch::new("pmds-qp");
    let socks: Vec<PathBuf> = (0..2).map(|i| scratch.path(&format!("s{i}.sock"))).collect();
    let ctl_sock = scratch.path("ctl.sock");
    let mut cmd = Command::new(ok(vswitch_binary()));
    for s in &socks {
        cmd.arg("--port").arg(format!("vhost-user:{}", s.display()));
    }
    cmd.args(["--engine", "worker", "--pmd-cores", "0,1", "--queue-pairs", "2", "--stats-interval", "1"]);
    cmd.arg("--ctl").arg(&ctl_sock);
    let mut sw = ok(Process::spawn("vswitch(2 PMDs, pairs)", cmd));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socks.iter().chain([&ctl_sock]).all(|s| s.exists()) {
        assert!(sw.is_running() && Instant::now() < deadline, "the switch did not listen:\n{}", sw.output());
        thread::sleep(Duration::from_millis(20));
    }
    let mut t = ok(Testpmd::spawn(&TestpmdConfig::tx_first_through("pmds-qp", &socks[0], &socks[1], 2)));
    let live = ok(t.wait_rx_on_every_port(10_000, Duration::from_secs(60)));
    eprintln!("testpmd while running: {live:?}");
    // While it runs: each PMD's shard of each port has exactly its own pair attached.
    let show = ctl(&ctl_sock, r#"{"cmd":"show"}"#);
    let shard = |v: &serde_json::Value, name: &str, pmd: u64| -> serde_json::Value {
        v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name && p["pmd"] == pmd)
            .unwrap_or_else(|| panic!("no {name} on pmd{pmd}: {v}"))
            .clone()
    };
    for (name, pmd, pair) in [("vhost0", 0, 0), ("vhost0", 1, 1), ("vhost1", 0, 1), ("vhost1", 1, 0)] {
        let p = shard(&show, name, pmd);
        assert_eq!(p["queue_pairs"], serde_json::json!([pair]), "{name} on pmd{pmd}: {p}");
        assert_eq!(p["queue_pairs_assigned"], serde_json::json!([pair]), "{name} on pmd{pmd}: {p}");
    }
    // And each pair's own counters, on the PMD that owns it: both directions moved.
    let stats = ctl(&ctl_sock, r#"{"cmd":"stats"}"#);
    for (name, pmd, pair) in [("vhost0", 0, 0), ("vhost0", 1, 1), ("vhost1", 0, 1), ("vhost1", 1, 0)] {
        let p = shard(&stats, name, pmd);
        let q = p["queues"].as_array().unwrap();
        assert_eq!(q.len(), 1, "one pair per shard: {p}");
        assert_eq!(q[0]["pair"], pair, "{p}");
        for dir in ["north", "south"] {
            assert!(q[0][dir]["packets"].as_u64().unwrap() > 1000, "{name} pair {pair} {dir}: {p}");
        }
    }
    assert!(t.process().signal_and_wait(libc::SIGINT, Duration::from_secs(15)).is_some(), "testpmd stops");
    let fwd = t.forward_stats();
    assert_eq!(fwd.len(), 2, "{fwd:?}");
    let ((rx0, tx0), (rx1, tx1)) = ((fwd[0].rx_packets, fwd[0].tx_packets), (fwd[1].rx_packets, fwd[1].tx_packets));
    assert!(rx0 > 0 && rx1 > 0, "traffic both ways: {fwd:?}");
    // In flight at the stop: the guest rings (256 per queue), the switch's bursts.
    let in_flight = 4096;
    assert!(rx1 <= tx0 && tx0 - rx1 <= in_flight, "port 0 -> port 1: sent {tx0}, received {rx1}");
    assert!(rx0 <= tx1 && tx1 - rx0 <= in_flight, "port 1 -> port 0: sent {tx1}, received {rx0}");
    // Every queue of both ports received through the switch.
    let streams = t.stream_stats();
    for port in 0..2 {
        for queue in 0..2 {
            let got = streams.iter().find(|s| (s.rx_port, s.rx_queue) == (port, queue)).map_or(0, |s| s.rx_packets);
            assert!(got >= 1000, "port {port} queue {queue} received {got}: {streams:?}");
        }
    }
    // Per PMD: every shard received from its pair and sent on it (the counters of the pair it
    // had, kept after the stop). Received by the switch on port 0 (both shards) is at least what
    // testpmd's port 1 received, and at most what testpmd's port 0 sent.
    let stats = ctl(&ctl_sock, r#"{"cmd":"stats"}"#);
    let mut rx_sw = [0u64; 2];
    for (name, pmd) in [("vhost0", 0), ("vhost0", 1), ("vhost1", 0), ("vhost1", 1)] {
        let p = shard(&stats, name, pmd);
        let (rx, tx) = (p["rx_packets"].as_u64().unwrap(), p["tx_packets"].as_u64().unwrap());
        assert!(rx > 1000 && tx > 1000, "{name} on pmd{pmd} carried traffic both ways: {p}");
        assert_eq!(p["drops"], 0, "{p}");
        rx_sw[(name == "vhost1") as usize] += rx;
    }
    assert!(
        rx1 <= rx_sw[0] && rx_sw[0] <= tx0,
        "port 0: testpmd sent {tx0}, switch got {}, port 1 got {rx1}",
        rx_sw[0]
    );
    assert!(
        rx0 <= rx_sw[1] && rx_sw[1] <= tx1,
        "port 1: testpmd sent {tx1}, switch got {}, port 0 got {rx0}",
        rx_sw[1]
    );
    let pmds = stats["pmds"].as_array().unwrap();
    assert_eq!(pmds.len(), 2);
    for p in pmds {
        assert!(p["forwarded"].as_u64().unwrap() > 1000, "both PMDs forwarded: {p}");
        assert!(p["busy_ns_per_packet"].as_f64().is_some_and(|ns| ns > 0.0), "measured busy time: {p}");
    }
    sw.signal(libc::SIGINT);
    assert!(sw.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "clean stop:\n{}", sw.output());
    let out = sw.stdout();
    assert!(out.contains("port 0 on pmd0 (core 0), queue pairs: pair 0 on pmd0, pair 1 on pmd1"), "{out}");
    assert!(out.contains("port 1 on pmd1 (core 1), queue pairs: pair 0 on pmd1, pair 1 on pmd0"), "{out}");
}
