//! Bad command lines get a clear error and a non-zero exit from both binaries, never a panic and
//! never a switch that starts anyway.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `bin args` (at most 20 s) and returns its exit code and standard error.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child =
        Command::new(bin).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{bin} {args:?} kept running on a bad command line");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_refused(bin: &str, args: &[&str]) {
    let (code, err) = run(bin, args);
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    assert!(matches!(code, Some(c) if c != 0), "{args:?} exited with {code:?}:\n{err}");
    assert!(err.trim().len() > 10, "{args:?}: no explanation on stderr");
}

#[test]
fn vswitch_refuses_garbage_in_every_flag_with_an_error_and_exit_code_2() {
    let bin = env!("CARGO_BIN_EXE_vswitch");
    let sock = std::env::temp_dir().join(format!("vs-cli-{}.sock", std::process::id()));
    let port = format!("vhost-user:{}", sock.display());
    let p: &str = &port;
    let cases: &[&[&str]] = &[
        &[],
        &["--engine", "memcpy"],
        &["--port", p],
        &["--port", p, "--engine"],
        &["--port", p, "--engine", "quantum"],
        &["--port", p, "--engine", "dmadev:"],
        &["--port", "", "--engine", "memcpy"],
        &["--port", "vhost-user:", "--engine", "memcpy"],
        &["--port", "tap:eth0", "--engine", "memcpy"],
        &["--port", "source:", "--engine", "memcpy"],
        &["--port", "source:1", "--engine", "memcpy"],
        &["--port", "source:99999999999999999999", "--engine", "memcpy"],
        &["--port", "source:-5", "--engine", "memcpy"],
        &["--port", p, "--port", p, "--engine", "memcpy"],
        &["--port", p, "--engine", "memcpy", "--pmd-cores", "x"],
        &["--port", p, "--engine", "memcpy", "--pmd-cores", "999999"],
        &["--port", p, "--engine", "memcpy", "--pmd-cores", ""],
        &["--port", p, "--engine", "memcpy", "--pmd-cores", "-1"],
        &["--port", p, "--engine", "memcpy", "--stats-interval", "soon"],
        &["--port", p, "--engine", "memcpy", "--stats-interval", "-1"],
        &["--port", p, "--engine", "memcpy", "--stats-interval", "NaN"],
        &["--port", p, "--engine", "memcpy", "--duration", "inf"],
        &["--port", p, "--engine", "memcpy", "--duration", "1e400"],
        &["--port", p, "--engine", "memcpy", "--duration"],
        &["--port", p, "--engine", "memcpy", "--frobnicate"],
        &["--port", p, "--engine", "memcpy", "stray"],
        &["--port", "vhost-user:/nonexistent-dir/x.sock", "--engine", "memcpy", "--duration", "1"],
    ];
    for args in cases {
        assert_refused(bin, args);
    }
    // A path that is not a socket is refused and left alone.
    let plain = std::env::temp_dir().join(format!("vs-cli-plain-{}", std::process::id()));
    std::fs::write(&plain, b"data").unwrap();
    let port = format!("vhost-user:{}", plain.display());
    assert_refused(bin, &["--port", &port, "--engine", "memcpy", "--duration", "1"]);
    assert_eq!(std::fs::read(&plain).unwrap(), b"data");
    std::fs::remove_file(&plain).unwrap();
}

#[test]
fn pvp_refuses_garbage_in_every_flag_with_an_error() {
    let bin = env!("CARGO_BIN_EXE_pvp");
    let cases: &[&[&str]] = &[
        &["--engine"],
        &["--engine", "quantum"],
        &["--size", "x"],
        &["--size", "0"],
        &["--size", "100-50"],
        &["--size", "64-"],
        &["--size", "99999999"],
        &["--duration", "x"],
        &["--duration", "-3"],
        &["--duration", "NaN"],
        &["--duration", "inf"],
        &["--duration", "0"],
        &["--cpu-below", "lots"],
        &["--cpu-below", "-1"],
        &["--frobnicate"],
    ];
    for args in cases {
        assert_refused(bin, args);
    }
}

#[test]
fn cpu_latency_measures_two_cpus_and_refuses_bad_ones() {
    let bin = env!("CARGO_BIN_EXE_vswitch");
    for args in [
        &["cpu-latency", "0", "0"][..],
        &["cpu-latency", "0"],
        &["cpu-latency", "0", "x"],
        &["cpu-latency", "0", "99999"],
        &["cpu-latency", "0", "1", "--runs", "0"],
        &["cpu-latency", "0", "1", "--round-trips", "0"],
        &["cpu-latency", "0", "1", "--round-trips", "18446744073709551615", "--runs", "2"],
    ] {
        assert_refused(bin, args);
    }
    // Two CPUs this process may run on (the CI runners have two; a one-CPU box has no pair).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list");
    let mut allowed = list.trim().split(',').flat_map(|r| {
        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
        lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap()
    });
    let (Some(a), Some(b)) = (allowed.next(), allowed.next()) else {
        eprintln!("one CPU only: no pair to measure");
        return;
    };
    let (a, b) = (a.to_string(), b.to_string());
    let out = Command::new(bin).args(["cpu-latency", &a, &b, "--round-trips", "2000", "--runs", "3"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cpu-latency {a} {b} failed: {}", String::from_utf8_lossy(&out.stderr));
    // "cpu A <-> cpu B: <ns> ns per cache-line round trip (median of 3 runs; min .., max ..)"
    let ns: f64 = text
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(" ns"))
        .and_then(|(v, _)| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {text:?}"));
    assert!(ns > 0.0 && ns.is_finite(), "round trip {ns} ns in {text:?}");
    assert!(text.contains("median of 3 runs"), "{text:?}");
}
