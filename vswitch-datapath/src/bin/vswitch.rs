//! vswitch: a vhost-user switch. Each `--port vhost-user:<path>` is a vhost-user socket that a
//! virtio driver (QEMU, DPDK's virtio-user) connects to; one PMD thread forwards between the ports
//! through the copy engine of your choice. For benchmarks a port may also be `sink` (counts and
//! frees every packet sent to it) or `source:<bytes>` (makes packets of that size as fast as the
//! port it is connected to takes them), so that one direction of a vhost port can be loaded alone.
//!
//! ```text
//! vswitch --port vhost-user:<socket path>|sink|source:<bytes> [--port ...]
//!     --engine memcpy|worker|dmadev:<name>|dsa:<wq>|dsa:model [--eal-args "..."] [--pmd-cores 0,1] [--mac-learning]
//!     [--stats-interval SECS] [--duration SECS] [--no-adaptive]
//! ```
//!
//! Forwarding: with two ports, 0 <-> 1; with more, pairs (0,1), (2,3), ... (an odd last port
//! receives nothing). So `--port vhost-user:/tmp/s0 --port sink` measures guest -> host and
//! `--port source:64 --port vhost-user:/tmp/s0` host -> guest. Per-port stats (cumulative
//! packets and bytes, and the packet rates since the previous stats line) are printed every
//! `--stats-interval` seconds (default 1; 0: only at exit). Exits cleanly on SIGINT/SIGTERM or
//! after `--duration` seconds: the PMD stops (draining every copy in flight), then every socket
//! is closed and removed. Frontends may disconnect and reconnect at any time.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use copy_engine::{Adaptive, Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::null_port::{SOURCE_HEADER, SOURCE_MAX};
use vswitch_datapath::vhost_user::{DeviceConfig, VhostUserServer};
use vswitch_datapath::{PacketPool, Pmd, Port, PortStats, SinkPort, SourcePort, VhostPort};

const USAGE: &str = "usage: vswitch --port vhost-user:<socket path>|sink|source:<bytes> [--port ...] \
                     --engine memcpy|worker|dmadev:<name>|dsa:<wq>|dsa:model [--eal-args \"...\"] [--pmd-cores 0,1] [--mac-learning] \
                     [--stats-interval SECS] [--duration SECS] [--no-adaptive]\n\
                     ports are cross-connected in pairs (0,1), (2,3), ...; sink: counts and frees what it is sent; \
                     source:<bytes>: makes packets of that size (42..=9216) as fast as its peer port takes them; \
                     --no-adaptive: every copy of 256 B or more goes to the engine, even while it lags";

/// Packet buffers of the PMD thread, and the largest packet a guest may send.
const POOL_PACKETS: usize = 4096;
const DATA_ROOM: usize = 9216 + 64;
/// The PMD checks the clock and the stop flag every this many iterations.
const CHECK_EVERY: u64 = 1024;

/// What one `--port` is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortSpec {
    /// A vhost-user server on this socket path.
    VhostUser(String),
    /// A [`SinkPort`].
    Sink,
    /// A [`SourcePort`] of packets of this many bytes.
    Source(usize),
}

impl PortSpec {
    fn parse(v: &str) -> Result<Self, String> {
        if let Some(path) = v.strip_prefix("vhost-user:") {
            if path.is_empty() {
                return Err("--port: empty socket path".into());
            }
            return Ok(PortSpec::VhostUser(path.to_string()));
        }
        if v == "sink" {
            return Ok(PortSpec::Sink);
        }
        if let Some(n) = v.strip_prefix("source:") {
            return match n.parse::<usize>() {
                Ok(n) if (SOURCE_HEADER..=SOURCE_MAX).contains(&n) => Ok(PortSpec::Source(n)),
                _ => Err(format!("--port: source:<bytes> needs a size in {SOURCE_HEADER}..={SOURCE_MAX}, got {n:?}")),
            };
        }
        Err(format!("--port: expected vhost-user:<socket path>, sink or source:<bytes>, got {v:?}"))
    }
}

#[derive(Debug)]
struct Args {
    ports: Vec<PortSpec>,
    engine: String,
    eal_args: Option<String>,
    pmd_cores: Vec<usize>,
    mac_learning: bool,
    stats_interval: Option<Duration>,
    duration: Option<Duration>,
    adaptive: bool,
}

fn secs(flag: &str, v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Ok(s),
        _ => Err(format!("{flag}: expected seconds (a number in 0..=1e9), got {v:?}")),
    }
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        ports: Vec::new(),
        engine: String::new(),
        eal_args: None,
        pmd_cores: Vec::new(),
        mac_learning: false,
        stats_interval: Some(Duration::from_secs(1)),
        duration: None,
        adaptive: true,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--port" => {
                let spec = PortSpec::parse(&value("--port")?)?;
                if let PortSpec::VhostUser(path) = &spec {
                    if a.ports.contains(&spec) {
                        return Err(format!("--port: {path} given twice"));
                    }
                }
                a.ports.push(spec);
            }
            "--engine" => a.engine = value("--engine")?,
            "--eal-args" => a.eal_args = Some(value("--eal-args")?),
            "--pmd-cores" => {
                let v = value("--pmd-cores")?;
                a.pmd_cores = v
                    .split(',')
                    .map(|c| c.trim().parse::<usize>().map_err(|_| format!("--pmd-cores: bad core {c:?} in {v:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--mac-learning" => a.mac_learning = true,
            "--stats-interval" => {
                let s = secs("--stats-interval", &value("--stats-interval")?)?;
                a.stats_interval = (s > 0.0).then(|| Duration::from_secs_f64(s));
            }
            "--duration" => a.duration = Some(Duration::from_secs_f64(secs("--duration", &value("--duration")?)?)),
            "--no-adaptive" => a.adaptive = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    if a.ports.is_empty() {
        return Err("at least one --port is needed".into());
    }
    match a.engine.as_str() {
        "" => return Err("--engine is needed".into()),
        "memcpy" | "worker" => {}
        e if e.strip_prefix("dmadev:").is_some_and(|n| !n.is_empty()) => {}
        e if e.strip_prefix("dsa:").is_some_and(|n| !n.is_empty()) => {}
        e => return Err(format!("--engine: expected memcpy, worker, dmadev:<name> or dsa:<wq>, got {e:?}")),
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vswitch: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("vswitch: cannot handle signal {sig}: {e}");
            return ExitCode::from(2);
        }
    }
    if args.mac_learning {
        eprintln!("vswitch: --mac-learning is not implemented yet: ports are cross-connected in pairs");
    }
    // Adaptive offload: copies go to the CPU while the engine lags (a worker thread without a
    // core of its own, a shared device), and back to the engine when it keeps up.
    let policy = Policy::default().with_adaptive(args.adaptive.then(Adaptive::default));
    let result = match args.engine.as_str() {
        "memcpy" => run(Channel::new(MemcpyEngine::default(), policy), &args, &stop),
        "worker" => match WorkerEngine::new(WorkerConfig::default()) {
            Ok(e) => run(Channel::new(e, policy), &args, &stop),
            Err(e) => Err(format!("worker engine: {e}")),
        },
        other if other.starts_with("dsa:") => dsa(&other["dsa:".len()..], policy, &args, &stop),
        other => dmadev(other.strip_prefix("dmadev:").unwrap_or(other), policy, &args, &stop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "dmadev")]
fn dmadev(name: &str, policy: Policy, args: &Args, stop: &AtomicBool) -> Result<(), String> {
    use copy_engine_dmadev::{DmadevEngine, EalBuilder};
    let mut b = match &args.eal_args {
        Some(extra) => extra.split_whitespace().fold(EalBuilder::new(), |b, a| b.arg(a)),
        None => EalBuilder::skeleton(),
    };
    b = b.file_prefix(format!("vswitch-{}", std::process::id()));
    let eal = b.init().map_err(|e| format!("EAL: {e}"))?;
    let engine = DmadevEngine::open(&eal, name, 1024).map_err(|e| format!("dmadev {name:?}: {e}"))?;
    run(Channel::new(engine, policy), args, stop)
}

#[cfg(not(feature = "dmadev"))]
fn dmadev(name: &str, _policy: Policy, _args: &Args, _stop: &AtomicBool) -> Result<(), String> {
    Err(format!(
        "dmadev {name:?}: this build has no dmadev engine: rebuild with `--features dmadev` (needs libdpdk-dev)"
    ))
}

/// `dsa:<wq>` opens a user work queue through the kernel's idxd driver; `dsa:model` runs the
/// software device model instead (no hardware).
#[cfg(feature = "dsa")]
fn dsa(wq: &str, policy: Policy, args: &Args, stop: &AtomicBool) -> Result<(), String> {
    use copy_engine_dsa::{DsaConfig, DsaEngine, ModelConfig};
    if wq == "model" {
        let engine = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).map_err(|e| e.to_string())?;
        return run(Channel::new(engine, policy), args, stop);
    }
    let engine = DsaEngine::open(wq, DsaConfig::default()).map_err(|e| format!("dsa {wq:?}: {e}"))?;
    run(Channel::new(engine, policy), args, stop)
}

#[cfg(not(feature = "dsa"))]
fn dsa(wq: &str, _policy: Policy, _args: &Args, _stop: &AtomicBool) -> Result<(), String> {
    Err(format!("dsa {wq:?}: this build has no DSA engine: rebuild with `--features dsa`"))
}

/// Pins the calling thread to `core`.
#[allow(unsafe_code)]
fn pin_to(core: usize) -> Result<(), String> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(format!("--pmd-cores: core {core} is out of range"));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it (core checked above);
    // sched_setaffinity reads exactly `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!("--pmd-cores: cannot pin to core {core}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn run<E: CopyEngine>(chan: Channel<E>, args: &Args, stop: &AtomicBool) -> Result<(), String> {
    let engine_name = chan.with_engine(|e| e.info().name.clone());
    let mut pmd = Pmd::new(chan, PacketPool::new(POOL_PACKETS, DATA_ROOM));
    let (tx, rx) = mpsc::channel();
    pmd.set_commands(rx);
    // One entry per port: its vhost-user server, `None` for a sink or a source.
    let mut servers: Vec<Option<VhostUserServer>> = Vec::new();
    for (i, spec) in args.ports.iter().enumerate() {
        match spec {
            PortSpec::VhostUser(path) => {
                let name = format!("vhost{i}");
                let port = pmd.add_port(Box::new(VhostPort::unattached(name.clone())));
                let cfg =
                    DeviceConfig { name: name.clone(), port, pmd: tx.clone(), detach_timeout: Duration::from_secs(10) };
                let server = VhostUserServer::start(path, cfg).map_err(|e| format!("port {i} ({path}): {e}"))?;
                servers.push(Some(server));
            }
            PortSpec::Sink => {
                pmd.add_port(Box::new(SinkPort::new(format!("sink{i}"))));
                servers.push(None);
            }
            PortSpec::Source(len) => {
                pmd.add_port(Box::new(SourcePort::new(format!("source{i}"), *len)));
                servers.push(None);
            }
        }
    }
    drop(tx);
    for pair in (0..args.ports.len()).collect::<Vec<_>>().chunks_exact(2) {
        pmd.connect(pair[0], pair[1]);
        pmd.connect(pair[1], pair[0]);
    }
    if let Some(&core) = args.pmd_cores.first() {
        pin_to(core)?;
        if args.pmd_cores.len() > 1 {
            eprintln!("vswitch: one PMD thread, pinned to core {core}; the other --pmd-cores are not used");
        }
    }
    println!("vswitch: engine {engine_name}, {} port(s):", args.ports.len());
    for (i, (s, spec)) in servers.iter().zip(&args.ports).enumerate() {
        match (s, spec) {
            (Some(s), _) => println!("  vhost{i}: vhost-user server on {}", s.path().display()),
            (None, PortSpec::Source(len)) => println!("  source{i}: {len}-byte packets"),
            (None, _) => println!("  sink{i}: counts and frees what it is sent"),
        }
    }

    let start = Instant::now();
    let mut last = StatsSample { t: Duration::ZERO, ports: vec![PortStats::default(); servers.len()] };
    let mut next_stats = args.stats_interval.map(|d| start + d);
    let mut iterations = 0u64;
    loop {
        pmd.run_once();
        iterations += 1;
        if iterations % CHECK_EVERY != 0 {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            println!("vswitch: signal received, stopping");
            break;
        }
        let now = Instant::now();
        if args.duration.is_some_and(|d| now - start >= d) {
            break;
        }
        if let (Some(at), Some(every)) = (next_stats, args.stats_interval) {
            if now >= at {
                print_stats(&pmd, &servers, now - start, &mut last);
                // After a stall (the thread was descheduled), the next line is a full interval on.
                next_stats = Some(if now >= at + every { now + every } else { at + every });
            }
        }
    }
    // Stop the PMD: every copy drains, every guest buffer in flight goes back to its guest. Then
    // drop it (its channel first), so the control threads find no PMD, and close the sockets.
    pmd.stop();
    print_stats(&pmd, &servers, start.elapsed(), &mut last);
    drop(pmd);
    for s in servers.into_iter().flatten() {
        s.stop();
    }
    println!("vswitch: stopped");
    Ok(())
}

/// The counters at the previous stats line, for rates.
struct StatsSample {
    t: Duration,
    ports: Vec<PortStats>,
}

fn print_stats<E: CopyEngine>(pmd: &Pmd<E>, servers: &[Option<VhostUserServer>], t: Duration, last: &mut StatsSample) {
    let dt = (t - last.t).as_secs_f64();
    let rate = |now: u64, before: u64| if dt > 0.0 { now.saturating_sub(before) as f64 / dt } else { 0.0 };
    let c = pmd.channel().stats();
    println!(
        "t={:.1}s  copies: {} offloaded, {} by CPU ({} small, {} engine lagging, {} ring full, {} retried), \
         {} in flight",
        t.as_secs_f64(),
        c.offloaded,
        c.cpu_copies(),
        c.cpu_small,
        c.cpu_adaptive,
        c.cpu_ring_full,
        c.cpu_retry,
        pmd.channel().in_flight()
    );
    for (i, s) in servers.iter().enumerate() {
        let p = pmd.port(i);
        let st = p.stats();
        let state = match (p.as_any().downcast_ref::<VhostPort>(), s) {
            (Some(v), _) if v.is_attached() => "attached",
            (_, Some(s)) if s.is_connected() => "connected",
            (_, Some(_)) => "waiting",
            (None, None) => "local",
            (Some(_), None) => "-",
        };
        let prev = last.ports[i];
        println!(
            "  {}: {state:<9} rx {} pkts {} bytes, tx {} pkts {} bytes, drops {}, pushed back {}, in flight {}, \
             copies offloaded {} cpu {}, rx {:.0} pps, tx {:.0} pps",
            Port::name(p),
            st.rx_packets,
            st.rx_bytes,
            st.tx_packets,
            st.tx_bytes,
            st.drops,
            st.tx_pushed_back,
            st.in_flight,
            st.copies_offloaded,
            st.copies_cpu,
            rate(st.rx_packets, prev.rx_packets),
            rate(st.tx_packets, prev.tx_packets),
        );
        last.ports[i] = st;
    }
    last.t = t;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_parse_and_bad_ones_are_explained() {
        let a = p("--port vhost-user:/tmp/a --port vhost-user:/tmp/b --engine worker --pmd-cores 1,0 \
                   --stats-interval 0 --duration 2.5")
        .unwrap();
        assert_eq!(a.ports, [PortSpec::VhostUser("/tmp/a".into()), PortSpec::VhostUser("/tmp/b".into())]);
        assert_eq!(a.pmd_cores, [1, 0]);
        assert_eq!(a.stats_interval, None);
        assert_eq!(a.duration, Some(Duration::from_millis(2500)));
        assert!(p("--port /tmp/a --engine worker").unwrap_err().contains("vhost-user:"));
        assert!(p("--port vhost-user:/tmp/a").unwrap_err().contains("--engine"));
        assert!(p("--port vhost-user:/tmp/a --engine dma").unwrap_err().contains("dmadev:<name>"));
        assert!(p("--port vhost-user:/tmp/a --engine dmadev:").is_err());
        assert!(p("--port vhost-user:/tmp/a --engine dsa:").is_err());
        assert_eq!(p("--port vhost-user:/tmp/a --engine dsa:wq0.0").unwrap().engine, "dsa:wq0.0");
        assert_eq!(p("--port vhost-user:/tmp/a --engine dsa:model").unwrap().engine, "dsa:model");
        assert!(p("--port vhost-user:/tmp/a --port vhost-user:/tmp/a --engine memcpy").is_err());
        assert!(p("--engine memcpy").unwrap_err().contains("--port"));
        assert!(p("--port vhost-user:/tmp/a --engine memcpy --duration -1").is_err());
        assert!(p("--port vhost-user:/tmp/a --engine memcpy --pmd-cores x").is_err());
        assert!(p("--port vhost-user:/tmp/a --engine memcpy --bogus").unwrap_err().contains("--bogus"));
    }

    #[test]
    fn sink_and_source_ports_parse() {
        let a = p("--port vhost-user:/tmp/a --port sink --port source:64 --port vhost-user:/tmp/b --engine memcpy")
            .unwrap();
        assert_eq!(
            a.ports,
            [
                PortSpec::VhostUser("/tmp/a".into()),
                PortSpec::Sink,
                PortSpec::Source(64),
                PortSpec::VhostUser("/tmp/b".into())
            ]
        );
        // Several sinks and sources are fine; only a socket path may not repeat.
        assert_eq!(p("--port sink --port sink --engine worker").unwrap().ports, [PortSpec::Sink, PortSpec::Sink]);
        assert_eq!(p("--port source:1518 --port source:9216 --engine memcpy").unwrap().ports.len(), 2);
        assert!(p("--port source:41 --engine memcpy").unwrap_err().contains("42..=9216"));
        assert!(p("--port source:9217 --engine memcpy").is_err());
        assert!(p("--port source: --engine memcpy").is_err());
        assert!(p("--port source:x --engine memcpy").is_err());
        assert!(p("--port sinks --engine memcpy").unwrap_err().contains("sink or source"));
        assert!(p("--port vhost-user: --engine memcpy").unwrap_err().contains("empty socket path"));
    }
}
