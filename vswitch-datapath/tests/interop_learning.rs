//! MAC learning with the real driver: three DPDK testpmd guests (one virtio-user port each) on
//! three vhost-user ports of the `vswitch` binary started with `--mac-learning`.
//!
//! One guest sends at a time (testpmd txonly: source MAC its own, destination `set eth-peer`),
//! the others receive (rxonly):
//! 1. guest 0 broadcasts: both other guests get every frame (flooding), the switch learns 0;
//! 2. guest 1 broadcasts: guests 0 and 2 get every frame, the switch learns 1;
//! 3. guest 0 sends unicast to guest 1's MAC: only guest 1 gets it.
//!
//! And a port added and removed at runtime through the control socket: a guest on a port added
//! with `add-port` gets the broadcasts; `remove-port` under traffic takes it away while another
//! guest keeps receiving every frame that was sent, none lost.
//!
//! The counts are exact: each guest's received count, and the switch's own per-port and L2
//! counters after it stopped (drained), equal the sums of what the senders sent, so a frame
//! flooded where it should not be, or lost, fails the test. Skipped when `dpdk-testpmd` is not
//! installed, except in CI.

#[path = "common/testpmd.rs"]
mod testpmd;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testpmd::{
    have_testpmd, parse_forward_stats, vswitch_binary, ForwardMode, HarnessError, Process, Scratch, Testpmd,
    TestpmdConfig, Topology, Vdev,
};

fn ok<T>(r: Result<T, HarnessError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A guest: one virtio-user port on `sock`, interactive, receiving (rxonly).
fn guest(name: &str, sock: &std::path::Path) -> Testpmd {
    let mut c = TestpmdConfig::guest(name).vdev(Vdev::virtio_user(sock, false)).topology(Topology::Loop);
    c.interactive = true;
    c.auto_start = false;
    c.forward_mode = ForwardMode::RxOnly;
    c.no_mlockall = true;
    let mut t = ok(Testpmd::spawn(&c));
    ok(t.command("start", Duration::from_secs(10)));
    t
}

/// The guest port's MAC address (`show port info 0`).
fn mac_of(t: &mut Testpmd) -> String {
    let out = ok(t.command("show port info 0", Duration::from_secs(10)));
    let line = out.lines().find(|l| l.contains("MAC address:")).unwrap_or_else(|| panic!("no MAC in {out}"));
    line.split("MAC address:").nth(1).unwrap().trim().to_lowercase()
}

/// Makes `t` send frames to `dst` until it sent at least `min`, then stop; returns how many it
/// sent, then puts it back to receiving.
fn send(t: &mut Testpmd, dst: &str, min: u64) -> u64 {
    for cmd in ["stop", "set fwd txonly", &format!("set eth-peer 0 {dst}"), "set txpkts 64", "start"] {
        ok(t.command(cmd, Duration::from_secs(10)));
    }
    ok(t.wait_stats(0, Duration::from_secs(60), "frames sent", |s| s.tx_packets >= min));
    let out = ok(t.command("stop", Duration::from_secs(10)));
    let fwd = parse_forward_stats(&out);
    assert_eq!(fwd.len(), 1, "forward stats of one port in {out}");
    for cmd in ["set fwd rxonly", "start"] {
        ok(t.command(cmd, Duration::from_secs(10)));
    }
    fwd[0].tx_packets
}

/// Waits until `t` received at least `n` frames in all; returns how many it did.
fn received(t: &mut Testpmd, n: u64) -> u64 {
    ok(t.wait_stats(0, Duration::from_secs(60), "frames received", |s| s.rx_packets >= n)).rx_packets
}

/// The number after `key` in the last line of `out` that starts (trimmed) with `prefix`.
fn last_stat(out: &str, prefix: &str, key: &str) -> u64 {
    let line = out.lines().rev().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w.iter().position(|x| *x == key).unwrap_or_else(|| panic!("no {key:?} in {line}"));
    w[i + 1].trim_end_matches(',').parse().unwrap_or_else(|_| panic!("{key} in {line}"))
}

/// The switch with `ports` sockets (`s0.sock`, ...) and a control socket, MAC learning on.
fn start_switch(scratch: &Scratch, ports: usize, pmd_cores: &str) -> (Process, Vec<PathBuf>, PathBuf) {
    let socks: Vec<PathBuf> = (0..ports).map(|i| scratch.path(&format!("s{i}.sock"))).collect();
    let ctl = scratch.path("ctl.sock");
    let mut cmd = Command::new(ok(vswitch_binary()));
    for s in &socks {
        cmd.arg("--port").arg(format!("vhost-user:{}", s.display()));
    }
    cmd.args(["--engine", "worker", "--mac-learning", "--pmd-cores", pmd_cores]);
    cmd.args(["--stats-interval", "1", "--ctl"]).arg(&ctl);
    let mut sw = ok(Process::spawn("vswitch(learning)", cmd));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socks.iter().chain([&ctl]).all(|s| s.exists()) {
        assert!(sw.is_running() && Instant::now() < deadline, "the switch did not listen:\n{}", sw.output());
        thread::sleep(Duration::from_millis(20));
    }
    (sw, socks, ctl)
}

/// One control request, its answer.
fn ctl(path: &std::path::Path, line: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a).unwrap();
    a
}

#[test]
fn interop_port_added_and_removed_at_runtime_under_traffic_loses_nothing_accepted() {
    if !have_testpmd() {
        assert!(std::env::var_os("CI").is_none(), "dpdk-testpmd is missing in CI");
        eprintln!("skipped: dpdk-testpmd is not installed (scripts/test.sh installs it)");
        return;
    }
    let _serial = testpmd::machine_lock("interop", Duration::from_secs(600));
    let scratch = Scratch::new("addrm");
    let (mut sw, mut socks, ctl_sock) = start_switch(&scratch, 2, &testpmd::SWITCH_CPU.to_string());
    let extra = scratch.path("s2.sock");
    let a = ctl(&ctl_sock, &format!(r#"{{"cmd":"add-port","path":"{}"}}"#, extra.display()));
    assert!(a.contains(r#""ok":true"#) && a.contains("vhost2"), "{a}");
    socks.push(extra.clone());
    let mut g: Vec<Testpmd> = (0..3).map(|i| guest(&format!("addrm-g{i}"), &socks[i])).collect();

    // The added port takes part in flooding.
    let n0 = send(&mut g[0], "ff:ff:ff:ff:ff:ff", 2000);
    assert_eq!(received(&mut g[1], n0), n0);
    assert_eq!(received(&mut g[2], n0), n0, "the guest on the added port got every broadcast");

    // Guest 0 broadcasts; port 2 goes away in the middle of it.
    for cmd in ["stop", "set fwd txonly", "set eth-peer 0 ff:ff:ff:ff:ff:ff", "start"] {
        ok(g[0].command(cmd, Duration::from_secs(10)));
    }
    received(&mut g[1], n0 + 1000);
    let a = ctl(&ctl_sock, r#"{"cmd":"remove-port","port":"vhost2"}"#);
    assert!(a.contains(r#""ok":true"#), "{a}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while extra.exists() {
        assert!(Instant::now() < deadline, "the removed port's socket is closed");
        thread::sleep(Duration::from_millis(20));
    }
    // Traffic goes on after the removal.
    let at_removal = ok(g[1].port_stats(0)).rx_packets;
    received(&mut g[1], at_removal + 1000);
    let out = ok(g[0].command("stop", Duration::from_secs(10)));
    let n2 = parse_forward_stats(&out)[0].tx_packets;
    assert_eq!(received(&mut g[1], n0 + n2), n0 + n2, "guest 1 got every frame guest 0 sent, through the removal");
    let show = ctl(&ctl_sock, r#"{"cmd":"show"}"#);
    assert!(show.contains(r#""kind":"removed""#), "{show}");

    sw.signal(libc::SIGINT);
    assert!(sw.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "clean stop:\n{}", sw.output());
    let out = sw.stdout();
    assert_eq!(last_stat(&out, "vhost1:", "tx"), n0 + n2, "{out}");
    assert_eq!(ok(g[1].port_stats(0)).rx_packets, n0 + n2);
}

#[test]
fn interop_learning_floods_unknown_and_broadcast_then_unicasts_to_one_port() {
    learning(&testpmd::SWITCH_CPU.to_string());
}

/// The same with two PMDs: ports 0 and 2 on PMD 0, port 1 on PMD 1, so floods and unicast cross
/// the trunk between the PMDs' switches.
#[test]
fn interop_learning_across_two_pmds_floods_and_unicasts_the_same() {
    learning("0,1");
}

fn learning(pmd_cores: &str) {
    let several = pmd_cores.contains(',');
    if !have_testpmd() {
        assert!(std::env::var_os("CI").is_none(), "dpdk-testpmd is missing in CI");
        eprintln!("skipped: dpdk-testpmd is not installed (scripts/test.sh installs it)");
        return;
    }
    let _serial = testpmd::machine_lock("interop", Duration::from_secs(600));
    let scratch = Scratch::new("learn");
    let (mut sw, socks, _ctl) = start_switch(&scratch, 3, pmd_cores);
    let mut g: Vec<Testpmd> = (0..3).map(|i| guest(&format!("learn-g{i}"), &socks[i])).collect();
    let macs: Vec<String> = g.iter_mut().map(mac_of).collect();
    assert!(macs[0] != macs[1] && macs[1] != macs[2] && macs[0] != macs[2], "distinct MACs: {macs:?}");

    // 1. Guest 0 broadcasts: flooded to 1 and 2.
    let n0 = send(&mut g[0], "ff:ff:ff:ff:ff:ff", 2000);
    assert_eq!(received(&mut g[1], n0), n0, "guest 1 got every broadcast of guest 0");
    assert_eq!(received(&mut g[2], n0), n0, "guest 2 got every broadcast of guest 0");
    // 2. Guest 1 broadcasts: flooded to 0 and 2.
    let n1 = send(&mut g[1], "ff:ff:ff:ff:ff:ff", 2000);
    assert_eq!(received(&mut g[0], n1), n1, "guest 0 got every broadcast of guest 1");
    assert_eq!(received(&mut g[2], n0 + n1), n0 + n1, "guest 2 got every broadcast of guest 1");
    // 3. Guest 0 to guest 1's MAC, learned on port 1: to port 1 only.
    let n3 = send(&mut g[0], &macs[1], 2000);
    assert_eq!(received(&mut g[1], n0 + n3), n0 + n3, "guest 1 got every unicast of guest 0");

    // The switch drains and prints its final counters; they say where every frame went.
    sw.signal(libc::SIGINT);
    assert!(sw.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "clean stop:\n{}", sw.output());
    let out = sw.stdout();
    // With several PMDs each prints a shard of every port (pairs it does not serve: none
    // attached): a port's frames are the sum over the PMDs' last blocks.
    let tx = |p: usize| -> u64 {
        if !several {
            return last_stat(&out, &format!("vhost{p}:"), "tx");
        }
        (0..2)
            .map(|k| {
                let at = out.rfind(&format!("pmd{k} t=")).unwrap_or_else(|| panic!("no pmd{k} block:\n{out}"));
                let block: Vec<&str> = out[at..].lines().skip(1).take_while(|l| l.starts_with("  ")).collect();
                last_stat(&block.join("\n"), &format!("vhost{p}:"), "tx")
            })
            .sum()
    };
    assert_eq!([tx(0), tx(1), tx(2)], [n1, n0 + n3, n0 + n1], "frames sent to each port:\n{out}");
    for (i, t) in g.iter_mut().enumerate() {
        let s = ok(t.port_stats(0));
        assert_eq!(s.rx_packets, [n1, n0 + n3, n0 + n1][i], "guest {i} received exactly its frames");
    }
    if several {
        // Each PMD's switch prints its own l2 line; PMD 1 (port 1 only) got guest 0's unicast
        // over the trunk and sent it on as unicast.
        assert!(out.contains("trunk-pmd1") && out.contains("trunk-pmd0"), "{out}");
        return;
    }
    assert_eq!(last_stat(&out, "l2:", "unicast"), n3, "{out}");
    assert_eq!(last_stat(&out, "l2:", "flooded"), n0 + n1, "{out}");
    assert_eq!(last_stat(&out, "l2:", "filtered"), 0, "{out}");
    // Each flood had two targets: one copy, the second target got the received buffer.
    let copies = out.lines().rev().find(|l| l.contains("l2:")).unwrap();
    assert!(copies.contains(&format!("({} copies)", n0 + n1)), "{copies}");
}
