//! The control socket of the `vswitch` binary (`--ctl`), driven over its unix socket and through
//! `vswitch ctl`: every command answers one JSON line; malformed JSON and unknown commands get a
//! clear error on the same connection, and the switch goes on forwarding, its settings changed
//! only by valid commands. The switch runs a source and two sinks with MAC learning, so it needs
//! no guest.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Switch {
    child: Child,
    sock: PathBuf,
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn start(tag: &str) -> Switch {
    start_with(
        tag,
        &["--port", "source:64", "--port", "sink", "--port", "sink", "--engine", "memcpy", "--mac-learning"],
    )
}

/// A switch with `args` (ports, engine, forwarding) and a control socket, once it listens.
fn start_with(tag: &str, args: &[&str]) -> Switch {
    let sock = std::env::temp_dir().join(format!("vs-ctl-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(env!("CARGO_BIN_EXE_vswitch"))
        .args(args)
        .args(["--stats-interval", "0", "--ctl"])
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the switch did not open its control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    Switch { child, sock }
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    fn connect(p: &Path) -> Self {
        let w = UnixStream::connect(p).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Client { w, r }
    }

    fn ask(&mut self, line: &str) -> Value {
        writeln!(self.w, "{line}").unwrap();
        let mut a = String::new();
        self.r.read_line(&mut a).unwrap();
        serde_json::from_str(&a).unwrap_or_else(|e| panic!("answer to {line:?} is not JSON ({e}): {a:?}"))
    }
}

fn forwarded(c: &mut Client) -> u64 {
    let s = c.ask(r#"{"cmd":"stats"}"#);
    assert_eq!(s["ok"], true, "{s}");
    s["pmds"][0]["forwarded"].as_u64().unwrap()
}

#[test]
fn control_commands_answer_and_malformed_json_gets_an_error_while_the_switch_runs_on() {
    let mut sw = start("cmds");
    let mut c = Client::connect(&sw.sock);

    let show = c.ask(r#"{"cmd":"show"}"#);
    assert_eq!(show["ok"], true, "{show}");
    assert_eq!(show["forwarding"], "learning");
    let names: Vec<&str> = show["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["source0", "sink1", "sink2"]);
    assert_eq!(show["pmds"][0]["engine"], "memcpy");
    assert_eq!(show["pmds"][0]["cpu_below"], 256);

    let before = forwarded(&mut c);
    for bad in
        ["{not json", "[1,2,3]", r#"{"cmd":"reboot"}"#, r#"{"cmd":"set-cpu-below","bytes":"lots"}"#, "\u{1}\u{2}"]
    {
        let e = c.ask(bad);
        assert_eq!(e["ok"], false, "{bad:?} -> {e}");
        assert!(e["error"].as_str().is_some_and(|m| m.len() > 5), "{bad:?} -> {e}");
    }
    assert!(c.ask("{not json")["error"].as_str().unwrap().contains("malformed JSON"));
    // Bytes that are not UTF-8, and a line longer than the limit: errors, the connection lives on.
    c.w.write_all(b"\xff\xfe{}\n").unwrap();
    let mut a = String::new();
    c.r.read_line(&mut a).unwrap();
    assert!(a.contains("not UTF-8"), "{a}");
    let long = format!(r#"{{"cmd":"show","pad":"{}"}}"#, "x".repeat(100_000));
    assert!(c.ask(&long)["error"].as_str().unwrap().contains("longer than"));
    // Same connection, still served; the switch still forwards and its settings are unchanged.
    let after = forwarded(&mut c);
    assert!(after > before, "the switch kept forwarding: {before} -> {after}");
    assert_eq!(c.ask(r#"{"cmd":"show"}"#)["pmds"][0]["cpu_below"], 256);

    // The source's MAC is learned on port 0; its destination is unknown, so the sinks get
    // every packet by flooding, one copy per packet.
    let t = c.ask(r#"{"cmd":"mac-table"}"#);
    assert_eq!(t["ok"], true, "{t}");
    assert_eq!(t["entries"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["entries"][0]["mac"], "02:00:00:00:00:01");
    assert_eq!(t["entries"][0]["port"], 0);
    let s = c.ask(r#"{"cmd":"stats"}"#);
    let l2 = &s["l2"];
    assert!(l2["flooded"].as_u64().unwrap() > 0 && l2["unicast"] == 0, "{l2}");
    assert_eq!(s["ports"][1]["name"], "sink1");

    // Runtime settings.
    let r = c.ask(r#"{"cmd":"set-cpu-below","bytes":1024}"#);
    assert_eq!((r["ok"].clone(), r["was"].clone()), (Value::Bool(true), Value::from(256)), "{r}");
    let r = c.ask(r#"{"cmd":"set-fallback","policy":"push-back"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let show = c.ask(r#"{"cmd":"show"}"#);
    assert_eq!(show["pmds"][0]["cpu_below"], 1024);
    assert_eq!(show["pmds"][0]["fallback"], "PushBack");

    // A client that goes away mid-line does not disturb the others.
    {
        let mut rude = UnixStream::connect(&sw.sock).unwrap();
        rude.write_all(b"{\"cmd\":\"sh").unwrap();
    }
    assert_eq!(c.ask(r#"{"cmd":"show"}"#)["ok"], true);

    // SIGTERM: a clean stop, the socket removed.
    // SAFETY: signalling the child this test spawned.
    assert_eq!(unsafe { libc::kill(sw.child.id() as i32, libc::SIGTERM) }, 0);
    let st = sw.child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!sw.sock.exists(), "the control socket is removed at exit");
}

#[test]
fn vswitch_ctl_prints_the_answer_and_its_exit_code_says_how_it_went() {
    let sw = start("sub");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vswitch")).arg("ctl").arg(&sw.sock).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = ctl(&["show"]);
    assert_eq!(code, Some(0), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ports"].as_array().unwrap().len(), 3);
    let (code, _) = ctl(&["set-cpu-below", "64"]);
    assert_eq!(code, Some(0));
    let (_, out) = ctl(&[r#"{"cmd":"show"}"#]);
    assert!(out.contains("\"cpu_below\": 64"), "{out}");
    let (code, out) = ctl(&["reboot"]);
    assert_eq!(code, Some(1), "an error answer: {out}");
    let none =
        Command::new(env!("CARGO_BIN_EXE_vswitch")).args(["ctl", "/nonexistent/vs.sock", "show"]).output().unwrap();
    assert_eq!(none.status.code(), Some(2), "no switch there");
}

#[test]
fn ports_are_added_and_removed_at_runtime_and_the_rest_forwards_on() {
    let sw = start("ports");
    let mut c = Client::connect(&sw.sock);
    let extra = std::env::temp_dir().join(format!("vs-ctl-extra-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&extra);
    let r = c.ask(&format!(r#"{{"cmd":"add-port","path":"{}"}}"#, extra.display()));
    assert_eq!((r["ok"].clone(), r["port"].clone()), (Value::Bool(true), Value::from("vhost3")), "{r}");
    assert!(extra.exists(), "the new port listens");
    let show = c.ask(r#"{"cmd":"show"}"#);
    assert_eq!(show["ports"][3]["kind"], "vhost-user");
    assert_eq!(show["ports"][3]["up"], false, "no guest yet");
    // The same socket twice is refused, and adds nothing.
    let r = c.ask(&format!(r#"{{"cmd":"add-port","path":"{}"}}"#, extra.display()));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(c.ask(r#"{"cmd":"show"}"#)["ports"].as_array().unwrap().len(), 4);

    // Remove the new port and a sink; the source goes on feeding the other sink.
    for p in ["vhost3", "2"] {
        let r = c.ask(&format!(r#"{{"cmd":"remove-port","port":"{p}"}}"#));
        assert_eq!(r["ok"], true, "{p}: {r}");
    }
    assert_eq!(c.ask(r#"{"cmd":"remove-port","port":"vhost3"}"#)["ok"], false, "removed once only");
    assert_eq!(c.ask(r#"{"cmd":"remove-port","port":"nosuch"}"#)["ok"], false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while extra.exists() {
        assert!(Instant::now() < deadline, "the removed port's socket is closed and removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let show = c.ask(r#"{"cmd":"show"}"#);
    let kinds: Vec<&str> = show["ports"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["local", "local", "removed", "removed"]);
    let sink1 = |c: &mut Client| c.ask(r#"{"cmd":"stats"}"#)["ports"][1]["tx_packets"].as_u64().unwrap();
    let a = sink1(&mut c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink1(&mut c) == a {
        assert!(Instant::now() < deadline, "sink1 still receives");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn with_two_pmds_show_and_stats_cover_both_and_their_engines() {
    let ports = ["--port", "source:64", "--port", "sink", "--port", "source:64", "--port", "sink"];
    let pmds = ["--engine", "worker", "--pmd-cores", "0,1", "--port-pmd", "2:1", "--port-pmd", "3:0"];
    let sw = start_with("pmds", &[&ports[..], &pmds[..]].concat());
    let mut c = Client::connect(&sw.sock);
    let show = c.ask(r#"{"cmd":"show"}"#);
    assert_eq!(show["ok"], true, "{show}");
    let pmds = show["pmds"].as_array().unwrap();
    assert_eq!(pmds.len(), 2, "{show}");
    assert_eq!((pmds[0]["id"].clone(), pmds[1]["id"].clone()), (Value::from(0), Value::from(1)));
    assert!(pmds.iter().all(|p| p["engine"] == "worker"), "an engine each: {show}");
    // Every pair crosses: each PMD has its real ports plus a ring end each way per pair.
    let on = |k: u64| -> Vec<String> {
        show["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pmd"] == k)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(on(0).contains(&"source0".to_string()) && on(0).contains(&"sink3".to_string()), "{:?}", on(0));
    assert!(on(1).contains(&"sink1".to_string()) && on(1).contains(&"source2".to_string()), "{:?}", on(1));
    assert!(on(0).iter().any(|n| n.starts_with("to-pmd1")) && on(1).iter().any(|n| n.starts_with("from-pmd0")));
    assert_eq!(c.ask("{oops")["ok"], false);
    let forwarded = |c: &mut Client| {
        let s = c.ask(r#"{"cmd":"stats"}"#);
        s["pmds"].as_array().unwrap().iter().map(|p| p["forwarded"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    let a = forwarded(&mut c);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = forwarded(&mut c);
        if b[0] > a[0] && b[1] > a[1] {
            break;
        }
        assert!(Instant::now() < deadline, "both PMDs forward: {a:?} -> {b:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = c.ask(r#"{"cmd":"set-cpu-below","bytes":128}"#);
    assert_eq!(r["ok"], true, "{r}");
    let show = c.ask(r#"{"cmd":"show"}"#);
    assert!(show["pmds"].as_array().unwrap().iter().all(|p| p["cpu_below"] == 128), "set on every PMD: {show}");
    let r = c.ask(r#"{"cmd":"remove-port","port":"sink1"}"#);
    assert_eq!(r["ok"], false, "with several PMDs only vhost-user ports come and go: {r}");
    assert_eq!(c.ask(r#"{"cmd":"add-port","path":"/tmp/x.sock"}"#)["ok"], false, "add-port needs MAC learning");
}

#[test]
fn with_two_pmds_ports_are_added_to_the_named_or_next_pmd_and_removed_drained() {
    let tag = format!("vs-ctl-pmds-ports-{}", std::process::id());
    let sw = start_with(
        &tag,
        &["--port", "source:64", "--port", "sink", "--engine", "worker", "--pmd-cores", "0,1", "--mac-learning"],
    );
    let mut c = Client::connect(&sw.sock);
    let path = |n: &str| std::env::temp_dir().join(format!("{tag}-{n}.sock"));
    let (a, b) = (path("a"), path("b"));
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    // Named: PMD 1. Not named: round robin, the next after the two ports of the command line.
    let r = c.ask(&format!(r#"{{"cmd":"add-port","path":"{}","pmd":1}}"#, a.display()));
    assert_eq!((r["ok"].clone(), r["port"].clone(), r["pmd"].clone()), (true.into(), "vhost2".into(), 1.into()), "{r}");
    let r = c.ask(&format!(r#"{{"cmd":"add-port","path":"{}"}}"#, b.display()));
    assert_eq!((r["ok"].clone(), r["port"].clone(), r["pmd"].clone()), (true.into(), "vhost3".into(), 0.into()), "{r}");
    assert!(a.exists() && b.exists(), "both listen");
    let r = c.ask(r#"{"cmd":"add-port","path":"/tmp/never.sock","pmd":2}"#);
    assert!(r["ok"] == false && r["error"].as_str().unwrap().contains("no PMD 2"), "{r}");
    let r = c.ask(&format!(r#"{{"cmd":"add-port","path":"{}"}}"#, a.display()));
    assert_eq!(r["ok"], false, "a socket in use is refused: {r}");
    let show = c.ask(r#"{"cmd":"show"}"#);
    let find = |show: &Value, name: &str| -> Vec<Value> {
        show["ports"].as_array().unwrap().iter().filter(|p| p["name"] == name).cloned().collect()
    };
    let v2 = find(&show, "vhost2");
    assert_eq!(v2.len(), 1, "one PMD holds it: {show}");
    assert_eq!(
        (v2[0]["pmd"].clone(), v2[0]["kind"].clone(), v2[0]["up"].clone()),
        (1.into(), "vhost-user".into(), false.into())
    );
    assert_eq!(find(&show, "vhost3")[0]["pmd"], 0, "{show}");
    // A failed add leaves only a removed stand-in (vhost4, on PMD 1: round robin moves on only
    // when a port was added).
    let v4 = find(&show, "vhost4");
    assert_eq!((v4.len(), v4[0]["kind"].clone()), (1, "removed".into()), "{show}");

    let r = c.ask(r#"{"cmd":"remove-port","port":"vhost2"}"#);
    assert_eq!((r["ok"].clone(), r["pmds"].clone()), (true.into(), serde_json::json!([1])), "{r}");
    assert_eq!(c.ask(r#"{"cmd":"remove-port","port":"vhost2"}"#)["ok"], false, "removed once only");
    let r = c.ask(r#"{"cmd":"remove-port","port":"3"}"#);
    assert_eq!((r["ok"].clone(), r["port"].clone()), (true.into(), "vhost3".into()), "by index: {r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.exists() || b.exists() {
        assert!(Instant::now() < deadline, "the removed ports' sockets are closed and removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let show = c.ask(r#"{"cmd":"show"}"#);
    assert_eq!(
        (find(&show, "vhost2")[0]["kind"].clone(), find(&show, "vhost3")[0]["kind"].clone()),
        ("removed".into(), "removed".into())
    );
    // The source on PMD 0 goes on feeding the sink on PMD 1 over the trunk.
    let sink = |c: &mut Client| -> u64 {
        let s = c.ask(r#"{"cmd":"stats"}"#);
        s["ports"].as_array().unwrap().iter().find(|p| p["name"] == "sink1").unwrap()["tx_packets"].as_u64().unwrap()
    };
    let before = sink(&mut c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink(&mut c) == before {
        assert!(Instant::now() < deadline, "sink1 still receives");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Busy time is measured per PMD: the source's PMD reports a per-packet cost.
    let s = c.ask(r#"{"cmd":"stats"}"#);
    let p0 = &s["pmds"][0];
    assert!(p0["busy_ns"].as_u64().unwrap() > 0 && p0["busy_ns_per_packet"].as_f64().unwrap() > 0.0, "{p0}");
}
