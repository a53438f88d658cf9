//! Interop smoke tests with the real driver: DPDK's `dpdk-testpmd` with two virtio-user ports,
//! each connected to a vhost-user socket of our `vswitch` binary, which cross-connects them. What
//! testpmd sends on port 0 must arrive on port 1 and vice versa; a testpmd killed mid-traffic and
//! started again must get traffic flowing again without restarting the switch.
//!
//! `cargo test -p vswitch-datapath -- interop` selects them. They are skipped (with a note) when
//! `dpdk-testpmd` is not installed. Every process they start is killed on drop, every wait is
//! bounded, and socket paths and EAL file prefixes are unique per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// One testpmd at a time: each wants two of the machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process killed (and reaped) when dropped.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Guard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Guard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Guard { name, child }
    }

    /// Sends `sig` (a `kill` signal name) and waits up to `limit` for the exit; kills it after.
    fn signal_and_wait(&mut self, sig: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
        self.wait(limit)
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not exit within {limit:?}: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vswitch-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_testpmd() -> bool {
    let found =
        Command::new("dpdk-testpmd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        // In CI scripts/test.sh installs dpdk-dev first, so a missing testpmd there is a failure,
        // not a reason to pass without testing anything.
        assert!(std::env::var_os("CI").is_none(), "dpdk-testpmd not found (install dpdk-dev: scripts/test.sh does)");
        eprintln!("dpdk-testpmd not found: skipping");
    }
    found
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_vswitch(dir: &Path, socks: &[PathBuf]) -> Guard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vswitch"));
    for s in socks {
        cmd.arg("--port").arg(format!("vhost-user:{}", s.display()));
    }
    cmd.args(["--engine", "worker", "--stats-interval", "1", "--duration", "120"])
        .stdout(std::fs::File::create(dir.join("vswitch.log")).unwrap())
        .stderr(Stdio::inherit());
    let g = Guard::spawn("vswitch", &mut cmd);
    wait_for("the vhost-user sockets", Duration::from_secs(10), || socks.iter().all(|s| s.exists()));
    g
}

fn start_testpmd(dir: &Path, socks: &[PathBuf], run: u32) -> (Guard, PathBuf) {
    start_testpmd_with_queues(dir, socks, run, 1)
}

/// testpmd with `queues` queue pairs on each virtio-user port. More than one needs the control
/// queue (`cq=1`, which virtio-user serves itself, turning `VQ_PAIRS_SET` into
/// `SET_VRING_ENABLE`), `--rxq`/`--txq`, and flows that differ so that the switch spreads them
/// over the pairs (`--txonly-multi-flow`: the `--tx-first` bursts vary the IPv4 source). One
/// forwarding lcore serves every queue.
fn start_testpmd_with_queues(dir: &Path, socks: &[PathBuf], run: u32, queues: u32) -> (Guard, PathBuf) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let log = dir.join(format!("testpmd-{run}.log"));
    let mut cmd = Command::new("dpdk-testpmd");
    cmd.args(["-l", "0,1", "--no-huge", "-m", "512", "--no-pci", "--no-telemetry"])
        .arg("--file-prefix")
        .arg(format!("vswitch-interop-{}-{n}", std::process::id()));
    for (i, s) in socks.iter().enumerate() {
        let cq = if queues > 1 { ",cq=1" } else { "" };
        cmd.arg(format!("--vdev=net_virtio_user{i},path={},queues={queues}{cq}", s.display()));
    }
    cmd.args(["--", "--tx-first", "--no-mlockall", "--total-num-mbufs", "16384", "--stats-period", "1"]);
    if queues > 1 {
        cmd.arg(format!("--rxq={queues}")).arg(format!("--txq={queues}")).args(["--nb-cores=1", "--txonly-multi-flow"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("testpmd-{run}.err"))).unwrap()));
    (Guard::spawn("dpdk-testpmd", &mut cmd), log)
}

/// The (RX-packets, TX-packets) of each port in testpmd's last "NIC statistics" blocks.
fn nic_stats(log: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut last: Vec<(u64, u64)> = Vec::new();
    let mut port = None;
    for line in text.lines() {
        if let Some(rest) = line.split("NIC statistics for port ").nth(1) {
            port = rest.split_whitespace().next().and_then(|p| p.parse::<usize>().ok());
            continue;
        }
        let Some(p) = port else { continue };
        let num = |key: &str| -> Option<u64> { line.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
        if last.len() <= p {
            last.resize(p + 1, (0, 0));
        }
        if let Some(v) = num("RX-packets:") {
            last[p].0 = v;
        }
        if let Some(v) = num("TX-packets:") {
            last[p].1 = v;
            port = None;
        }
    }
    last
}

/// Waits until testpmd reports at least `min` packets received on both ports; returns the stats.
fn wait_for_traffic(log: &Path, min: u64, limit: Duration) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + limit;
    loop {
        let s = nic_stats(log);
        if s.len() == 2 && s.iter().all(|&(rx, _)| rx >= min) {
            return s;
        }
        assert!(Instant::now() < deadline, "no traffic through the switch within {limit:?}: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The forward statistics testpmd prints when it stops: (RX-packets, TX-packets) per port.
fn forward_stats(log: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.contains("Forward statistics for port") {
            in_block = true;
            out.push((0, 0));
            continue;
        }
        if !in_block {
            continue;
        }
        let num = |key: &str| -> Option<u64> { line.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
        if let Some(v) = num("RX-packets:") {
            out.last_mut().unwrap().0 = v;
        }
        if let Some(v) = num("TX-packets:") {
            out.last_mut().unwrap().1 = v;
            in_block = false;
        }
    }
    out
}

/// The per-stream forward statistics testpmd prints when it stops (when it has more streams than
/// ports): ((RX port, RX queue), RX-packets, TX-packets) per stream that moved anything.
fn stream_stats(log: &Path) -> Vec<((u32, u32), u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.split("Forward Stats for RX Port=").nth(1) else { continue };
        let mut it = rest.split('/');
        let port = it.next().and_then(|p| p.trim().parse().ok());
        let queue = it.next().and_then(|q| q.trim_start_matches("Queue=").split("->").next()?.trim().parse().ok());
        let Some(stats) = lines.next() else { break };
        let num = |key: &str| -> Option<u64> { stats.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
        if let (Some(p), Some(q), Some(rx), Some(tx)) = (port, queue, num("RX-packets:"), num("TX-packets:")) {
            out.push(((p, q), rx, tx));
        }
    }
    out
}

#[test]
fn interop_testpmd_packets_cross_the_switch_both_ways() {
    if !have_testpmd() {
        return;
    }
    let _one_at_a_time = serial();
    let dir = TempDir::new("interop");
    let socks = [dir.0.join("vhost0.sock"), dir.0.join("vhost1.sock")];
    let mut vswitch = start_vswitch(&dir.0, &socks);
    let (mut testpmd, log) = start_testpmd(&dir.0, &socks, 0);
    let live = wait_for_traffic(&log, 10_000, Duration::from_secs(30));
    eprintln!("testpmd while running: {live:?}");
    assert!(testpmd.signal_and_wait("INT", Duration::from_secs(15)).is_some(), "testpmd did not stop");
    let fwd = forward_stats(&log);
    eprintln!("testpmd forward stats: {fwd:?}");
    assert_eq!(fwd.len(), 2, "testpmd printed forward stats for both ports");
    let ((rx0, tx0), (rx1, tx1)) = (fwd[0], fwd[1]);
    assert!(tx0 > 0 && tx1 > 0 && rx0 > 0 && rx1 > 0, "traffic both ways: {fwd:?}");
    // What one port sent arrived on the other, less what was still in flight at the stop (rings
    // and bursts: a few thousand packets at most). Nothing arrives that was not sent.
    assert!(rx1 <= tx0 && tx0 - rx1 <= 4096, "port 0 -> port 1: sent {tx0}, received {rx1}");
    assert!(rx0 <= tx1 && tx1 - rx0 <= 4096, "port 1 -> port 0: sent {tx1}, received {rx0}");
    let st = vswitch.signal_and_wait("INT", Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "vswitch exits cleanly on SIGINT: {st:?}");
    assert!(socks.iter().all(|s| !s.exists()), "sockets removed at exit");
    let out = std::fs::read_to_string(dir.0.join("vswitch.log")).unwrap();
    assert!(out.contains("vswitch: stopped"), "{out}");
}

#[test]
fn interop_testpmd_killed_mid_traffic_and_restarted_gets_traffic_again() {
    if !have_testpmd() {
        return;
    }
    let _one_at_a_time = serial();
    let dir = TempDir::new("interop-restart");
    let socks = [dir.0.join("a.sock"), dir.0.join("b.sock")];
    let mut vswitch = start_vswitch(&dir.0, &socks);
    let (mut first, log1) = start_testpmd(&dir.0, &socks, 1);
    wait_for_traffic(&log1, 10_000, Duration::from_secs(30));
    // A crash: no GET_VRING_BASE, the sockets just close while copies are in flight. The switch
    // clears the queues, unmaps the memory and listens again.
    first.signal_and_wait("KILL", Duration::from_secs(10));
    let (mut second, log2) = start_testpmd(&dir.0, &socks, 2);
    let s = wait_for_traffic(&log2, 10_000, Duration::from_secs(30));
    eprintln!("second testpmd: {s:?}");
    assert!(second.signal_and_wait("INT", Duration::from_secs(15)).is_some());
    assert!(matches!(vswitch.child.try_wait(), Ok(None)), "the switch survived the frontend's crash");
    let st = vswitch.signal_and_wait("TERM", Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "vswitch exits cleanly on SIGTERM: {st:?}");
}

#[test]
fn interop_testpmd_two_queue_pairs_cross_the_switch() {
    if !have_testpmd() {
        return;
    }
    let _one_at_a_time = serial();
    let dir = TempDir::new("interop-mq");
    let socks = [dir.0.join("mq0.sock"), dir.0.join("mq1.sock")];
    let mut vswitch = start_vswitch(&dir.0, &socks);
    let (mut testpmd, log) = start_testpmd_with_queues(&dir.0, &socks, 0, 2);
    let live = wait_for_traffic(&log, 10_000, Duration::from_secs(30));
    eprintln!("testpmd while running: {live:?}");
    assert!(testpmd.signal_and_wait("INT", Duration::from_secs(15)).is_some(), "testpmd did not stop");
    let fwd = forward_stats(&log);
    let streams = stream_stats(&log);
    eprintln!("testpmd forward stats: {fwd:?}; per stream ((port, queue), rx, tx): {streams:?}");
    assert_eq!(fwd.len(), 2, "testpmd printed forward stats for both ports");
    let ((rx0, tx0), (rx1, tx1)) = (fwd[0], fwd[1]);
    assert!(rx1 <= tx0 && tx0 - rx1 <= 8192, "port 0 -> port 1: sent {tx0}, received {rx1}");
    assert!(rx0 <= tx1 && tx1 - rx0 <= 8192, "port 1 -> port 0: sent {tx1}, received {rx0}");
    // Each stream receives on one (port, queue) and sends on the other port's same queue: every
    // queue of both ports received traffic through the switch, so the switch served both queue
    // pairs of both ports, both ways.
    for port in 0..2 {
        for queue in 0..2 {
            let got = streams.iter().find(|s| s.0 == (port, queue)).map_or(0, |s| s.1);
            assert!(got >= 1000, "port {port} queue {queue} received {got}: {streams:?}");
        }
    }
    let st = vswitch.signal_and_wait("INT", Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "vswitch exits cleanly on SIGINT: {st:?}");
    let out = std::fs::read_to_string(dir.0.join("vswitch.log")).unwrap();
    assert!(out.contains("vswitch: stopped"), "{out}");
}
