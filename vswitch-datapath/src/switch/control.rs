//! The control socket: a unix socket that speaks JSON lines, in the manner of `ovs-appctl`.
//!
//! Each line a client writes is one request, a JSON object with a `cmd` field (see [`Request`]);
//! each request gets one line back, a JSON object with `"ok": true` and the answer, or
//! `"ok": false` and an `"error"` saying why. A line that is not valid JSON, or not a known
//! request, is answered with an error by the control thread itself: the PMD never sees it, and the
//! connection stays open for the next line.
//!
//! The control threads never touch the PMD's state. A valid request is sent to the PMD thread on
//! a channel ([`CtlRequest`]) that the PMD checks between bursts (every few hundred iterations,
//! with a `try_recv` that takes no lock), and the PMD answers on a one-shot channel: no lock is
//! shared with the hot path. [`answer`] is what the PMD runs to build the answer. This module
//! owns the socket and the protocol; it must not know vhost-user.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use copy_engine::{CopyEngine, OnRingFull};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::switch::mac_table::format_mac;
use crate::switch::null_port::RemovedPort;
use crate::switch::pmd::Pmd;
use crate::switch::vhost_port::VhostPort;
use crate::vhost::QueueStats;

/// Longest request line accepted (bytes); a longer one is answered with an error.
pub const MAX_LINE: usize = 64 * 1024;

/// How long a control thread waits for the PMD's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with a copy when the engine's ring is full (`set-fallback`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Copy it on the CPU, in order.
    Cpu,
    /// Leave the packet with the switch and try again after the next completions.
    PushBack,
}

/// A request, as a client writes it: `{"cmd": "show"}`, `{"cmd": "set-cpu-below", "bytes": 512}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Ports (kind, state, queue pairs), the PMD and its engine, the forwarding mode.
    Show,
    /// Counters: per port, per queue pair and direction, the PMD loop, the copy channel
    /// (offloaded vs CPU by cause, in flight), the L2 switch.
    Stats,
    /// The MAC table's live entries.
    MacTable,
    /// Copies below this many bytes go to the CPU.
    SetCpuBelow {
        /// The new threshold.
        bytes: usize,
    },
    /// What a full engine ring does to a copy.
    SetFallback {
        /// The new policy.
        policy: Fallback,
    },
    /// Adds a vhost-user port serving a socket at `path` (MAC learning only: pairs are fixed).
    /// With several PMDs every queue pair of it goes to PMD `pmd`, or round robin when not given.
    AddPort {
        /// The socket path.
        path: String,
        /// The PMD that serves it (several PMDs only).
        #[serde(default)]
        pmd: Option<usize>,
    },
    /// Removes a port, draining it first (see [`Pmd::remove_port`]).
    RemovePort {
        /// The port's name (`vhost2`) or index.
        port: String,
    },
}

impl Request {
    /// Whether the switch itself (which owns the sockets) must carry this request out, rather
    /// than [`answer`].
    pub fn changes_ports(&self) -> bool {
        matches!(self, Request::AddPort { .. } | Request::RemovePort { .. })
    }
}

/// The index of the port `name_or_index` names.
pub fn find_port<E: CopyEngine>(pmd: &Pmd<E>, name_or_index: &str) -> Option<usize> {
    (0..pmd.port_count())
        .find(|&i| pmd.port(i).name() == name_or_index)
        .or_else(|| name_or_index.parse().ok().filter(|&i| i < pmd.port_count()))
}

/// An error answer.
pub fn error_answer(msg: impl Into<String>) -> Value {
    error(msg.into())
}

/// A request on its way to the PMD, with where its answer goes.
#[derive(Debug)]
pub struct CtlRequest {
    /// The request.
    pub request: Request,
    /// The answer (a JSON object; `answer` adds `ok`).
    pub reply: Sender<Value>,
}

/// Parses one request line; `Err` is the error answer.
pub fn parse_line(line: &str) -> Result<Request, Value> {
    if line.len() > MAX_LINE {
        return Err(error(format!("request longer than {MAX_LINE} bytes")));
    }
    let v: Value = serde_json::from_str(line).map_err(|e| error(format!("malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(error("a request is a JSON object with a \"cmd\" field".into()));
    }
    serde_json::from_value(v).map_err(|e| error(format!("bad request: {e}")))
}

fn error(msg: String) -> Value {
    json!({ "ok": false, "error": msg })
}

/// The control socket's listener: an accept thread and a thread per connection.
#[derive(Debug)]
pub struct CtlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl CtlServer {
    /// Listens on `path` (which must not exist) and returns the server and the channel the PMD
    /// reads requests from.
    pub fn start(path: &Path) -> std::io::Result<(CtlServer, Receiver<CtlRequest>)> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accept = std::thread::Builder::new().name("vswitch-ctl".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let tx = tx.clone();
                        let spawned =
                            std::thread::Builder::new().name("vswitch-ctl-conn".into()).spawn(move || serve(conn, tx));
                        if let Err(e) = spawned {
                            log::warn!("control socket: cannot start a thread for a client: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        log::warn!("control socket: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })?;
        Ok((CtlServer { path: path.to_owned(), stop, accept: Some(accept) }, rx))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket (open connections get errors from then on).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves one client until it closes: a line in, a line out.
fn serve(conn: UnixStream, pmd: Sender<CtlRequest>) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let complete = line.ends_with(b"\n");
        let reply = match std::str::from_utf8(&line) {
            Err(_) => error("malformed JSON: the line is not UTF-8".into()),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => match parse_line(text.trim()) {
                Err(e) => e,
                Ok(request) => {
                    let (tx, rx) = mpsc::channel();
                    if pmd.send(CtlRequest { request, reply: tx }).is_err() {
                        error("the switch is stopping".into())
                    } else {
                        rx.recv_timeout(ANSWER_TIMEOUT)
                            .unwrap_or_else(|_| error("the PMD did not answer in time".into()))
                    }
                }
            },
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
        // A line cut at MAX_LINE: skip the rest of it.
        if !complete {
            let mut rest = Vec::new();
            if reader.read_until(b'\n', &mut rest).is_err() {
                return;
            }
        }
    }
}

fn queue_json(q: &QueueStats) -> Value {
    json!({
        "packets": q.packets,
        "bytes": q.bytes,
        "in_flight": q.in_flight,
        "copies_offloaded": q.copies_offloaded,
        "copies_cpu": q.copies_cpu,
        "no_buffers": q.no_buffers,
        "bad_chains": q.bad_chains,
        "engine_errors": q.engine_errors,
        "broken": q.broken,
    })
}

/// What the PMD answers to `request` (on the PMD thread, between bursts). `info` holds what the
/// PMD does not know itself: `pmd` (its id), `engine` (its name), `core`, `uptime_s`.
pub fn answer<E: CopyEngine>(pmd: &mut Pmd<E>, request: &Request, info: &Value) -> Value {
    let mut v = match request {
        Request::Show => show(pmd, info),
        Request::Stats => stats(pmd, info),
        Request::MacTable => match pmd.l2() {
            None => return error("MAC learning is off (--forward pairs)".into()),
            Some(l2) => {
                let now = l2.now_ms();
                let entries: Vec<Value> = l2
                    .table()
                    .entries(now)
                    .iter()
                    .map(|e| json!({ "mac": format_mac(&e.mac), "port": e.port, "age_ms": e.age_ms }))
                    .collect();
                json!({ "capacity": l2.table().capacity(), "aging_ms": l2.table().aging_ms(), "entries": entries })
            }
        },
        Request::SetCpuBelow { bytes } => {
            let p = pmd.channel().policy();
            pmd.channel().set_policy(p.with_cpu_below(*bytes));
            json!({ "cpu_below": bytes, "was": p.cpu_below })
        }
        Request::AddPort { .. } | Request::RemovePort { .. } => {
            return error("adding and removing ports is the switch's, not the PMD's".into())
        }
        Request::SetFallback { policy } => {
            let p = pmd.channel().policy();
            let on = match policy {
                Fallback::Cpu => OnRingFull::CpuCopy,
                Fallback::PushBack => OnRingFull::PushBack,
            };
            pmd.channel().set_policy(p.with_ring_full(on));
            json!({ "fallback": format!("{on:?}") })
        }
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("ok".into(), Value::Bool(true));
    }
    v
}

fn show<E: CopyEngine>(pmd: &Pmd<E>, info: &Value) -> Value {
    let pmd_id = info.get("pmd").cloned().unwrap_or(Value::from(0));
    let ports: Vec<Value> = (0..pmd.port_count())
        .map(|i| {
            let p = pmd.port(i);
            let vhost = p.as_any().downcast_ref::<VhostPort>();
            let kind = match vhost {
                Some(_) => "vhost-user",
                None if p.as_any().is::<RemovedPort>() => "removed",
                None => "local",
            };
            json!({
                "index": i,
                "name": p.name(),
                "kind": kind,
                "up": p.is_up(),
                "queue_pairs": vhost.map(|v| v.attached_pairs()),
                "queue_pairs_assigned": vhost.and_then(|v| v.assigned_pairs()),
                "pmd": pmd_id,
            })
        })
        .collect();
    let policy = pmd.channel().policy();
    json!({
        "forwarding": if pmd.l2().is_some() { "learning" } else { "pairs" },
        "ports": ports,
        "pmds": [{
            "id": pmd_id,
            "core": info.get("core").cloned().unwrap_or(Value::Null),
            "engine": info.get("engine").cloned().unwrap_or(Value::Null),
            "ports": (0..pmd.port_count()).collect::<Vec<_>>(),
            "cpu_below": policy.cpu_below,
            "fallback": format!("{:?}", policy.on_ring_full),
            "adaptive": policy.adaptive.is_some(),
        }],
    })
}

fn stats<E: CopyEngine>(pmd: &Pmd<E>, info: &Value) -> Value {
    let ports: Vec<Value> = (0..pmd.port_count())
        .map(|i| {
            let p = pmd.port(i);
            let s = p.stats();
            let queues: Vec<Value> = p
                .as_any()
                .downcast_ref::<VhostPort>()
                .map(|v| {
                    v.pair_stats()
                        .iter()
                        .map(|(pair, n, s)| json!({ "pair": pair, "north": queue_json(n), "south": queue_json(s) }))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "name": p.name(),
                "pmd": info.get("pmd").cloned().unwrap_or(Value::from(0)),
                "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes,
                "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
                "tx_pushed_back": s.tx_pushed_back, "drops": s.drops, "errors": s.errors,
                "in_flight": s.in_flight,
                "copies_offloaded": s.copies_offloaded, "copies_cpu": s.copies_cpu,
                "queues": queues,
            })
        })
        .collect();
    let c = pmd.channel().stats();
    let m = pmd.stats();
    // Busy time measured by the loop (one clock read per iteration; a busy one is charged up to
    // the next one's start).
    let per_packet = m.busy_ns_per_packet().map_or(Value::Null, |ns| json!(ns));
    let l2 = pmd.l2().map(|l2| {
        let (s, t) = (l2.stats(), l2.table().stats());
        json!({
            "macs": l2.table().len(l2.now_ms()),
            "unicast": s.unicast, "flooded": s.flooded, "flood_copies": s.flood_copies,
            "filtered": s.filtered, "no_target": s.no_target, "runts": s.runts, "held": s.held,
            "learned": t.learned, "moved": t.moves, "evicted": t.evictions,
        })
    });
    json!({
        "ports": ports,
        "pmds": [{
            "id": info.get("pmd").cloned().unwrap_or(Value::from(0)),
            "iterations": m.iterations,
            "busy_iterations": m.busy_iterations,
            "busy_ns": m.busy_ns,
            "forwarded": m.forwarded,
            "busy_ns_per_packet": per_packet,
            "copies": {
                "offloaded": c.offloaded, "offloaded_bytes": c.offloaded_bytes,
                "cpu": c.cpu_copies(), "cpu_bytes": c.cpu_bytes,
                "cpu_small": c.cpu_small, "cpu_adaptive": c.cpu_adaptive, "cpu_ring_full": c.cpu_ring_full,
                "cpu_retry": c.cpu_retry, "cpu_refused": c.cpu_refused,
                "pushed_back": c.pushed_back, "errors": c.errors,
                "in_flight": pmd.channel().in_flight(),
            },
        }],
        "l2": l2,
    })
}

/// One answer from the answers of several PMDs to the same request: their `ports` and `pmds`
/// lists joined in PMD order, everything else from the first; `ok` only if every PMD said ok (the
/// first error otherwise).
pub fn merge_answers(answers: Vec<Value>) -> Value {
    if let Some(e) = answers.iter().find(|a| a["ok"] != true) {
        return e.clone();
    }
    let mut it = answers.into_iter();
    let Some(mut first) = it.next() else { return error("no PMD answered".into()) };
    for a in it {
        for key in ["ports", "pmds"] {
            if let (Some(Value::Array(into)), Some(Value::Array(more))) = (first.get_mut(key), a.get(key)) {
                into.extend(more.iter().cloned());
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_gets_an_error_answer() {
        assert_eq!(parse_line(r#"{"cmd":"show"}"#), Ok(Request::Show));
        assert_eq!(parse_line(r#"{"cmd":"set-cpu-below","bytes":512}"#), Ok(Request::SetCpuBelow { bytes: 512 }));
        assert_eq!(
            parse_line(r#"{"cmd":"set-fallback","policy":"push-back"}"#),
            Ok(Request::SetFallback { policy: Fallback::PushBack })
        );
        for bad in [
            "{not json",
            "[1,2]",
            "42",
            r#"{"cmd":"reboot"}"#,
            r#"{"nocmd":1}"#,
            r#"{"cmd":"set-cpu-below"}"#,
            r#"{"cmd":"set-cpu-below","bytes":-1}"#,
            r#"{"cmd":"set-fallback","policy":"pray"}"#,
            r#"{"cmd":"set-cpu-below","bytes":1,"extra":1}"#,
            r#"{"cmd":"add-port"}"#,
            r#"{"cmd":"remove-port","port":3}"#,
        ] {
            let e = parse_line(bad).unwrap_err();
            assert_eq!(e["ok"], false, "{bad}");
            assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {e}");
        }
        assert!(parse_line("{not json").unwrap_err()["error"].as_str().unwrap().contains("malformed JSON"));
    }

    #[test]
    fn answers_of_several_pmds_join_their_ports_and_pmds() {
        let a = json!({ "ok": true, "forwarding": "pairs", "ports": [{"name": "a"}], "pmds": [{"id": 0}] });
        let b = json!({ "ok": true, "forwarding": "pairs", "ports": [{"name": "b"}], "pmds": [{"id": 1}] });
        let m = merge_answers(vec![a.clone(), b]);
        assert_eq!(m["ports"], json!([{"name": "a"}, {"name": "b"}]));
        assert_eq!(m["pmds"], json!([{"id": 0}, {"id": 1}]));
        assert_eq!(merge_answers(vec![a, json!({"ok": false, "error": "x"})])["error"], "x");
    }
}
