//! vswitch: a vhost-user switch. Each `--port vhost-user:<path>` is a vhost-user socket that a
//! virtio driver (QEMU, DPDK's virtio-user) connects to; one PMD thread forwards between the ports
//! through the copy engine of your choice. For benchmarks a port may also be `sink` (counts and
//! frees every packet sent to it) or `source:<bytes>` (makes packets of that size as fast as the
//! port it is connected to takes them), so that one direction of a vhost port can be loaded alone.
//!
//! `vswitch --help` documents every option and the exit codes (the command line is clap's).
//! `--pmd-cores` with several cores runs a PMD thread per core (see the `multi` module); `--ctl`
//! serves a control socket that `vswitch ctl <path> <command>` talks to.
//!
//! Forwarding (`--forward pairs`, the default): with two ports, 0 <-> 1; with more, pairs (0,1),
//! (2,3), ... (an odd last port receives nothing). `--forward learning` (or `--mac-learning`) is an
//! L2 switch over all ports. So `--port vhost-user:/tmp/s0 --port sink` measures guest -> host and
//! `--port source:64 --port vhost-user:/tmp/s0` host -> guest. Per-port stats (cumulative
//! packets and bytes, and the packet rates since the previous stats line) are printed every
//! `--stats-interval` seconds (default 1; 0: only at exit). Exits cleanly on SIGINT/SIGTERM or
//! after `--duration` seconds: the PMD stops (draining every copy in flight), then every socket
//! is closed and removed. Frontends may disconnect and reconnect at any time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use copy_engine::{Adaptive, Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use log::{error, info, warn};
use vswitch_datapath::null_port::{SOURCE_HEADER, SOURCE_MAX};
use vswitch_datapath::switch::control::{self, CtlServer, Request};
use vswitch_datapath::vhost_user::{DeviceConfig, VhostUserServer, DEFAULT_MAX_QUEUE_PAIRS};
use vswitch_datapath::{
    LearningConfig, PacketPool, Pmd, Port, PortCommand, PortStats, RemovedPort, SinkPort, SourcePort, VhostPort,
};

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

impl std::str::FromStr for PortSpec {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        if let Some(path) = v.strip_prefix("vhost-user:") {
            if path.is_empty() {
                return Err("empty socket path".into());
            }
            return Ok(PortSpec::VhostUser(path.to_string()));
        }
        if v == "sink" {
            return Ok(PortSpec::Sink);
        }
        if let Some(n) = v.strip_prefix("source:") {
            return match n.parse::<usize>() {
                Ok(n) if (SOURCE_HEADER..=SOURCE_MAX).contains(&n) => Ok(PortSpec::Source(n)),
                _ => Err(format!("source:<bytes> needs a size in {SOURCE_HEADER}..={SOURCE_MAX}, got {n:?}")),
            };
        }
        Err(format!("expected vhost-user:<socket path>, sink or source:<bytes>, got {v:?}"))
    }
}

/// Which copy engine the PMD thread uses (`--engine`). Every engine spec is parsed here, and only
/// here, so that a new engine is one variant and one match arm.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EngineSpec {
    /// `memcpy`: synchronous CPU copies.
    Memcpy,
    /// `worker`: a worker thread copying asynchronously.
    Worker,
    /// `dmadev:<name>`: a DPDK dmadev.
    Dmadev(String),
    /// `dsa:<wq>`: an idxd work queue (e.g. `dsa:wq0.0`), or `dsa:model`, the DSA device model.
    Dsa(String),
}

impl std::str::FromStr for EngineSpec {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "memcpy" => Ok(EngineSpec::Memcpy),
            "worker" => Ok(EngineSpec::Worker),
            e => match (e.strip_prefix("dmadev:"), e.strip_prefix("dsa:")) {
                (Some(n), _) if !n.is_empty() => Ok(EngineSpec::Dmadev(n.to_string())),
                (_, Some(n)) if !n.is_empty() => Ok(EngineSpec::Dsa(n.to_string())),
                _ => Err(format!("expected memcpy, worker, dmadev:<name>, dsa:<wq> or dsa:model, got {v:?}")),
            },
        }
    }
}

/// How ports are connected (`--forward`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ForwardMode {
    /// Cross-connect ports in pairs (0,1), (2,3), ...; an odd last port receives nothing.
    Pairs,
    /// An L2 switch: learn source MACs per port, send known unicast to its port, flood
    /// broadcast, multicast and unknown unicast to every other port.
    Learning,
}

/// `PORT:PMD`.
fn port_pmd(v: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected PORT:PMD (two indexes), got {v:?}");
    let (a, b) = v.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

/// `PORT:PAIR:PMD`.
fn qp_pmd(v: &str) -> Result<(usize, usize, usize), String> {
    let bad = || format!("expected PORT:PAIR:PMD (three indexes), got {v:?}");
    let mut it = v.split(':').map(|x| x.parse::<usize>().map_err(|_| bad()));
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c), None) => Ok((a?, b?, c?)),
        _ => Err(bad()),
    }
}

/// A number of queue pairs, 1..=64.
fn queue_pairs(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of queue pairs in 1..=64, got {v:?}")),
    }
}

/// Seconds, as a finite number in 0..=1e9.
fn secs(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Ok(s),
        _ => Err(format!("expected seconds (a number in 0..=1e9), got {v:?}")),
    }
}

const EXIT_CODES: &str = "\
Exit codes:
  0  a clean stop (SIGINT, SIGTERM or --duration): every copy in flight drained, sockets removed
  2  a bad command line, or a failed start (a socket that cannot be served, an engine that does
     not open, a core that cannot be pinned); a message on stderr says why

Logging goes to stderr (RUST_LOG=debug for more, RUST_LOG=warn for less; VSWITCH_VHOST_TRACE=1
logs every vhost-user request). The banner and the stats lines go to stdout.";

/// vswitch: a vhost-user switch whose PMD thread hands its packet copies to a copy engine.
///
/// Each `--port vhost-user:<path>` is a vhost-user socket that a virtio driver (QEMU, DPDK's
/// virtio-user) connects to, at any time, and may leave and come back to. For benchmarks a port may
/// also be `sink` (counts and frees every packet sent to it) or `source:<bytes>` (makes packets of
/// that size as fast as the port it is connected to takes them). Per-port stats are printed every
/// --stats-interval seconds.
#[derive(Debug, clap::Parser)]
#[command(
    name = "vswitch",
    version,
    after_help = EXIT_CODES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    /// `vswitch ctl ...` talks to a running switch instead of running one.
    #[command(subcommand)]
    sub: Option<Sub>,
    /// A port: vhost-user:<socket path>, sink, or source:<bytes> (42..=9216). Repeat for more
    /// ports; a socket path may not repeat.
    #[arg(long = "port", value_name = "SPEC", required = true)]
    ports: Vec<PortSpec>,
    /// The copy engine: memcpy, worker, dsa:<wq> (an idxd work queue), dsa:model (the DSA device
    /// model) or dmadev:<name> (dmadev needs a build with the `dmadev` feature). With several
    /// --pmd-cores every PMD gets its own engine: worker and dsa:model one each; dmadev and dsa
    /// need one device per PMD, comma separated, in PMD order (dmadev:dma_skeleton0,dma_skeleton1
    /// or dsa:wq0.0,wq0.1).
    #[arg(long, value_name = "ENGINE", required = true)]
    engine: Option<EngineSpec>,
    /// EAL arguments for a dmadev engine (default: DPDK's dma_skeleton, --no-huge --no-pci).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    eal_args: Option<String>,
    /// Cores for PMD threads, comma separated: one PMD thread per core, each with its own copy
    /// engine (channel) and its own queue pairs (see --port-pmd for how they are assigned); a
    /// port whose pairs several PMDs serve is served by each of them, a PMD sending to it uses
    /// the pairs it serves itself; packets between ports of two PMDs cross on lock-free rings.
    #[arg(long, value_name = "CORES", value_delimiter = ',')]
    pmd_cores: Vec<usize>,
    /// With several --pmd-cores: every queue pair of port PORT (its index, from 0) on PMD PMD
    /// (the index of its core in --pmd-cores). Repeatable. Queue pairs not pinned go round robin:
    /// pair j of port i on PMD (i + j) % n, so one-queue guests spread over the PMDs and the pairs
    /// of a multiqueue guest land on different PMDs. A sink or source port is one pair.
    #[arg(long = "port-pmd", value_name = "PORT:PMD", value_parser = port_pmd)]
    port_pmd: Vec<(usize, usize)>,
    /// With several --pmd-cores: queue pair PAIR of vhost-user port PORT on PMD PMD (overrides
    /// --port-pmd for that pair). Repeatable.
    #[arg(long = "qp-pmd", value_name = "PORT:PAIR:PMD", value_parser = qp_pmd)]
    qp_pmd: Vec<(usize, usize, usize)>,
    /// Queue pairs each vhost-user port offers (virtio-net multiqueue); a frontend may use fewer.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_QUEUE_PAIRS, value_parser = queue_pairs)]
    queue_pairs: usize,
    /// How ports are connected.
    #[arg(long = "forward", value_enum, default_value_t = ForwardMode::Pairs)]
    forward: ForwardMode,
    /// The same as --forward learning.
    #[arg(long)]
    mac_learning: bool,
    /// MAC learning: entries the MAC table holds (rounded up to a multiple of 4); when a bucket
    /// is full its least recently seen entry makes room.
    #[arg(long, value_name = "ENTRIES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    mac_table_size: u32,
    /// MAC learning: a MAC not seen as a source for this many seconds is forgotten (its frames
    /// are flooded again).
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = secs)]
    mac_aging: f64,
    /// Copies smaller than this many bytes are done by the CPU (0: offload every copy).
    #[arg(long, value_name = "BYTES", default_value_t = Policy::default().cpu_below)]
    cpu_below: usize,
    /// Seconds between stats lines (0: only at exit).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = secs)]
    stats_interval: f64,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = secs)]
    duration: Option<f64>,
    /// Serve a control socket (JSON lines) on this path; `vswitch ctl <path> ...` talks to it.
    #[arg(long, value_name = "PATH")]
    ctl: Option<PathBuf>,
    /// Every copy at or above --cpu-below goes to the engine, even while it lags (adaptive
    /// offload is on by default: copies go to the CPU while the engine lags).
    #[arg(long)]
    no_adaptive: bool,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Send one command to a running switch's control socket and print its answer (one JSON
    /// line). Commands: show | stats | mac-table | set-cpu-below BYTES | set-fallback cpu|push-back
    /// | add-port SOCKET [PMD] | remove-port NAME|INDEX, or a raw JSON request ('{"cmd":"show"}'). Exit codes: 0 the switch answered ok, 1 it
    /// answered with an error, 2 no answer (no such socket, bad usage).
    #[command(after_help = "")]
    Ctl {
        /// The control socket (the switch's --ctl).
        socket: PathBuf,
        /// The command and its arguments.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Measure how long one cache line takes from CPU A to CPU B and back (ns, the median of
    /// several runs): the hand-off every vhost packet pays between a PMD core and a guest vCPU.
    /// Pick the PMD core with the shortest round trip to the guest; scripts/peer-bench.sh prints
    /// it next to every run. Exit codes: 0 measured, 2 bad CPUs (equal, absent, not allowed).
    CpuLatency {
        /// One CPU (this thread runs here).
        a: usize,
        /// The other CPU (a helper thread runs here).
        b: usize,
        /// Round trips per run.
        #[arg(long, default_value_t = 100_000)]
        round_trips: u64,
        /// Runs; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

/// The request line `vswitch ctl` sends for `words`.
fn ctl_request(words: &[String]) -> Result<String, String> {
    let (cmd, rest) = words.split_first().ok_or("no command")?;
    if cmd.starts_with('{') {
        return Ok(words.join(" "));
    }
    let mut o = serde_json::Map::new();
    o.insert("cmd".into(), cmd.clone().into());
    let arg = |key: &str| -> Result<(String, serde_json::Value), String> {
        match rest {
            [v] => Ok((key.into(), v.parse::<u64>().map_or_else(|_| v.clone().into(), Into::into))),
            _ => Err(format!("{cmd} takes one argument")),
        }
    };
    let args = match cmd.as_str() {
        "set-cpu-below" => vec![arg("bytes")?],
        "set-fallback" => vec![arg("policy")?],
        "add-port" => match rest {
            [v] => vec![("path".to_string(), v.clone().into())],
            [v, k] => vec![
                ("path".to_string(), v.clone().into()),
                (
                    "pmd".to_string(),
                    k.parse::<u64>().map_err(|_| format!("add-port: PMD {k:?} is not an index"))?.into(),
                ),
            ],
            _ => return Err(format!("{cmd} takes a socket path and, optionally, a PMD")),
        },
        "remove-port" => match rest {
            [v] => vec![("port".to_string(), v.clone().into())],
            _ => return Err(format!("{cmd} takes one argument")),
        },
        _ => rest
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("expected key=value, got {kv:?}"))?;
                Ok((k.to_string(), v.parse::<u64>().map_or_else(|_| v.to_string().into(), Into::into)))
            })
            .collect::<Result<_, String>>()?,
    };
    o.extend(args);
    Ok(serde_json::Value::Object(o).to_string())
}

/// `vswitch ctl`: one request, one answer.
fn ctl(socket: &std::path::Path, words: &[String]) -> ExitCode {
    use std::io::{BufRead, BufReader, Write};
    let line = match ctl_request(words) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vswitch ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        writeln!(s, "{line}")?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer)?;
        Ok(answer)
    })();
    match answer {
        Ok(a) if !a.trim().is_empty() => {
            let v: serde_json::Value = serde_json::from_str(&a).unwrap_or(serde_json::Value::Null);
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or(a));
            if v["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(_) => {
            eprintln!("vswitch ctl: {}: no answer", socket.display());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("vswitch ctl: {}: {e}", socket.display());
            ExitCode::from(2)
        }
    }
}

impl Args {
    /// Checks what clap cannot: repeated socket paths.
    fn validate(&self) -> Result<(), String> {
        for (i, spec) in self.ports.iter().enumerate() {
            if let PortSpec::VhostUser(path) = spec {
                if self.ports[..i].contains(spec) {
                    return Err(format!("--port: {path} given twice"));
                }
            }
        }
        let pmds = self.pmd_cores.len().max(1);
        for &(port, pmd) in &self.port_pmd {
            if port >= self.ports.len() || pmd >= pmds {
                return Err(format!("--port-pmd {port}:{pmd}: there are {} ports and {pmds} PMDs", self.ports.len()));
            }
        }
        for &(port, pair, pmd) in &self.qp_pmd {
            let pairs = self.pairs_of(port);
            if port >= self.ports.len() || pair >= pairs || pmd >= pmds {
                return Err(format!(
                    "--qp-pmd {port}:{pair}:{pmd}: there are {} ports, port {port} has {pairs} queue pair(s) \
                     (--queue-pairs {} for a vhost-user port) and {pmds} PMDs",
                    self.ports.len(),
                    self.queue_pairs
                ));
            }
        }
        let resources = match &self.engine {
            Some(EngineSpec::Dmadev(names)) => Some(("dmadev", names.split(',').count())),
            Some(EngineSpec::Dsa(wqs)) if wqs != "model" => Some(("dsa", wqs.split(',').count())),
            _ => None,
        };
        if let Some((kind, given)) = resources {
            if given != pmds {
                return Err(format!(
                    "--engine {kind}: {given} device(s) for {pmds} PMD(s): give one per PMD, comma separated"
                ));
            }
        }
        Ok(())
    }

    /// Queue pairs of port `port`: `--queue-pairs` for a vhost-user port, 1 for a sink or source.
    fn pairs_of(&self, port: usize) -> usize {
        match self.ports.get(port) {
            Some(PortSpec::VhostUser(_)) => self.queue_pairs,
            Some(_) => 1,
            None => 0,
        }
    }

    /// The PMD queue pair `pair` of port `port` runs on: `--qp-pmd` if it names the pair (the last
    /// one given), else `--port-pmd` if it names the port, else round robin, `(port + pair) % n`.
    fn pmd_of_pair(&self, port: usize, pair: usize) -> usize {
        let n = self.pmd_cores.len().max(1);
        if let Some(&(_, _, m)) = self.qp_pmd.iter().rev().find(|(p, q, _)| (*p, *q) == (port, pair)) {
            return m;
        }
        self.port_pmd.iter().rev().find(|(p, _)| *p == port).map_or((port + pair) % n, |&(_, m)| m)
    }

    /// Per port, the PMD of each of its queue pairs (one for a sink or a source).
    fn pair_pmds(&self) -> Vec<Vec<usize>> {
        (0..self.ports.len()).map(|i| (0..self.pairs_of(i)).map(|j| self.pmd_of_pair(i, j)).collect()).collect()
    }

    fn forward(&self) -> ForwardMode {
        if self.mac_learning {
            ForwardMode::Learning
        } else {
            self.forward
        }
    }

    fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval > 0.0).then(|| Duration::from_secs_f64(self.stats_interval))
    }

    fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs_f64)
    }
}

/// Parses the command line: `Err` is clap's (usage, help or version), to print and exit with.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let m = Args::command().try_get_matches_from(std::iter::once("vswitch".to_string()).chain(args))?;
    let a = Args::from_arg_matches(&m)?;
    a.validate().map_err(|e| Args::command().error(clap::error::ErrorKind::ArgumentConflict, e))?;
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with 0; a bad command line to stderr with 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match &args.sub {
        Some(Sub::Ctl { socket, command }) => return ctl(socket, command),
        &Some(Sub::CpuLatency { a, b, round_trips, runs }) => {
            return match latency::measure(a, b, round_trips, runs) {
                Ok(r) => {
                    println!("cpu {a} <-> cpu {b}: {r}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vswitch {e}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            error!("cannot handle signal {sig}: {e}");
            return ExitCode::from(2);
        }
    }
    // Adaptive offload: copies go to the CPU while the engine lags (a worker thread without a
    // core of its own, a shared device), and back to the engine when it keeps up.
    let policy =
        Policy::default().with_cpu_below(args.cpu_below).with_adaptive((!args.no_adaptive).then(Adaptive::default));
    let Some(engine) = &args.engine else {
        error!("--engine is needed");
        return ExitCode::from(2);
    };
    if args.pmd_cores.len() > 1 {
        return match multi::run(&args, policy, &stop) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let result = match engine {
        EngineSpec::Memcpy => run(Channel::new(MemcpyEngine::default(), policy), &args, &stop),
        EngineSpec::Worker => match WorkerEngine::new(WorkerConfig::default()) {
            Ok(e) => run(Channel::new(e, policy), &args, &stop),
            Err(e) => Err(format!("worker engine: {e}")),
        },
        EngineSpec::Dmadev(name) => dmadev(name, policy, &args, &stop),
        EngineSpec::Dsa(wq) => dsa(wq, policy, &args, &stop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
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
pub(crate) fn pin_to(core: usize) -> Result<(), String> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(format!("core {core} is out of range"));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it (core checked above);
    // sched_setaffinity reads exactly `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!("cannot pin to core {core}: {}", std::io::Error::last_os_error()));
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
                let cfg = DeviceConfig::new(name.clone(), port, tx.clone(), Duration::from_secs(10));
                let server = VhostUserServer::start_with_queue_pairs(path, cfg, args.queue_pairs)
                    .map_err(|e| format!("port {i} ({path}): {e}"))?;
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
    // Kept for ports added at runtime.
    let port_tx = tx;
    let (ctl_server, ctl_rx) = match &args.ctl {
        Some(path) => {
            let (s, rx) = CtlServer::start(path).map_err(|e| format!("--ctl {}: {e}", path.display()))?;
            (Some(s), Some(rx))
        }
        None => (None, None),
    };
    match args.forward() {
        ForwardMode::Pairs => {
            for pair in (0..args.ports.len()).collect::<Vec<_>>().chunks_exact(2) {
                pmd.connect(pair[0], pair[1]);
                pmd.connect(pair[1], pair[0]);
            }
        }
        ForwardMode::Learning => pmd.enable_learning(LearningConfig {
            table_size: args.mac_table_size as usize,
            aging: Duration::from_secs_f64(args.mac_aging),
        }),
    }
    if let Some(&core) = args.pmd_cores.first() {
        pin_to(core).map_err(|e| format!("--pmd-cores: {e}"))?;
    }
    let mode = match args.forward() {
        ForwardMode::Pairs => "ports cross-connected in pairs".to_string(),
        ForwardMode::Learning => format!(
            "MAC learning ({} entries, aging {} s)",
            pmd.l2().map_or(0, |l| l.table().capacity()),
            args.mac_aging
        ),
    };
    println!("vswitch: engine {engine_name}, {mode}, {} port(s):", args.ports.len());
    for (i, (s, spec)) in servers.iter().zip(&args.ports).enumerate() {
        match (s, spec) {
            (Some(s), _) => println!("  vhost{i}: vhost-user server on {}", s.path().display()),
            (None, PortSpec::Source(len)) => println!("  source{i}: {len}-byte packets"),
            (None, _) => println!("  sink{i}: counts and frees what it is sent"),
        }
    }

    let start = Instant::now();
    let mut last = StatsSample { t: Duration::ZERO, ports: vec![PortStats::default(); servers.len()] };
    let mut next_stats = args.stats_interval().map(|d| start + d);
    let mut iterations = 0u64;
    loop {
        pmd.run_once();
        iterations += 1;
        if iterations % CHECK_EVERY != 0 {
            continue;
        }
        if let Some(rx) = &ctl_rx {
            // One request per check: the PMD runs CHECK_EVERY iterations between two answers.
            if let Ok(req) = rx.try_recv() {
                let info = serde_json::json!({
                    "engine": engine_name,
                    "pmd": 0,
                    "core": args.pmd_cores.first(),
                    "uptime_s": start.elapsed().as_secs_f64(),
                });
                let a = if req.request.changes_ports() {
                    change_ports(&mut pmd, &mut servers, &req.request, &port_tx, &mut last, args)
                } else {
                    control::answer(&mut pmd, &req.request, &info)
                };
                let _ = req.reply.send(a);
            }
        }
        if stop.load(Ordering::Relaxed) {
            println!("vswitch: signal received, stopping");
            break;
        }
        let now = Instant::now();
        if args.duration().is_some_and(|d| now - start >= d) {
            break;
        }
        if let (Some(at), Some(every)) = (next_stats, args.stats_interval()) {
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
    if let Some(c) = ctl_server {
        c.stop();
    }
    println!("vswitch: stopped");
    Ok(())
}

/// Adds or removes a vhost-user port (`add-port`, `remove-port`), on the PMD thread.
fn change_ports<E: CopyEngine>(
    pmd: &mut Pmd<E>,
    servers: &mut Vec<Option<VhostUserServer>>,
    request: &Request,
    port_tx: &mpsc::Sender<PortCommand>,
    last: &mut StatsSample,
    args: &Args,
) -> serde_json::Value {
    use serde_json::json;
    match request {
        Request::AddPort { path, pmd: which } => {
            if let Some(k) = which.filter(|&k| k != 0) {
                return control::error_answer(format!("add-port: no PMD {k} (there is one PMD)"));
            }
            if args.forward() != ForwardMode::Learning {
                return control::error_answer("add-port needs --forward learning (pairs are fixed at start)");
            }
            let i = pmd.port_count();
            let name = format!("vhost{i}");
            let cfg = DeviceConfig::new(name.clone(), i, port_tx.clone(), Duration::from_secs(10));
            // The server first: if the socket cannot be served, no port is added.
            match VhostUserServer::start_with_queue_pairs(path, cfg, args.queue_pairs) {
                Ok(server) => {
                    pmd.add_port(Box::new(VhostPort::unattached(name.clone())));
                    servers.push(Some(server));
                    last.ports.push(PortStats::default());
                    info!("port {name} added: vhost-user server on {path}");
                    json!({ "ok": true, "port": name, "index": i })
                }
                Err(e) => control::error_answer(format!("add-port {path}: {e}")),
            }
        }
        Request::RemovePort { port } => {
            let Some(i) = control::find_port(pmd, port) else {
                return control::error_answer(format!("no port {port:?}"));
            };
            let Some(old) = pmd.remove_port(i) else {
                return control::error_answer(format!("port {port:?} was removed already"));
            };
            let name = old.name().to_string();
            drop(old);
            // The socket's threads detach through the PMD (which no longer has the port and
            // answers at once): stop them off this thread, which must keep running.
            if let Some(server) = servers.get_mut(i).and_then(Option::take) {
                if let Err(e) = std::thread::Builder::new().name(format!("stop-{name}")).spawn(move || server.stop()) {
                    warn!("port {name}: cannot stop its socket thread: {e}");
                }
            }
            info!("port {name} removed (drained)");
            json!({ "ok": true, "port": name, "index": i })
        }
        _ => control::error_answer("not a port change"),
    }
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
    if let Some(l2) = pmd.l2() {
        let (s, t) = (l2.stats(), l2.table().stats());
        println!(
            "  l2: {} MACs, unicast {}, flooded {} ({} copies), filtered {}, no target {}, runts {}, \
             learned {}, moved {}, evicted {}",
            l2.table().len(l2.now_ms()),
            s.unicast,
            s.flooded,
            s.flood_copies,
            s.filtered,
            s.no_target,
            s.runts,
            t.learned,
            t.moves,
            t.evictions
        );
    }
    for (i, s) in servers.iter().enumerate() {
        let p = pmd.port(i);
        let st = p.stats();
        let state = match (p.as_any().downcast_ref::<VhostPort>(), s) {
            (Some(v), _) if v.is_attached() => "attached",
            (_, Some(s)) if s.is_connected() => "connected",
            (_, Some(_)) => "waiting",
            (None, None) if p.as_any().is::<RemovedPort>() => "removed",
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

#[path = "vswitch/latency.rs"]
mod latency;
#[path = "vswitch/multi.rs"]
mod multi;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_parse_and_bad_ones_are_explained() {
        let a = p("--port vhost-user:/tmp/a --port vhost-user:/tmp/b --engine worker --pmd-cores 1,0 \
                   --stats-interval 0 --duration 2.5")
        .unwrap();
        assert_eq!(a.ports, [PortSpec::VhostUser("/tmp/a".into()), PortSpec::VhostUser("/tmp/b".into())]);
        assert_eq!(a.engine, Some(EngineSpec::Worker));
        assert_eq!(a.pmd_cores, [1, 0]);
        assert_eq!(a.stats_interval(), None);
        assert_eq!(a.duration(), Some(Duration::from_millis(2500)));
        assert_eq!(a.forward(), ForwardMode::Pairs);
        assert!(p("--port /tmp/a --engine worker").unwrap_err().contains("vhost-user:"));
        assert!(p("--port vhost-user:/tmp/a").unwrap_err().contains("--engine"));
        assert!(p("--port vhost-user:/tmp/a --engine dma").unwrap_err().contains("dmadev:<name>"));
        assert!(p("--port vhost-user:/tmp/a --engine dmadev:").is_err());
        assert!(p("--port vhost-user:/tmp/a --port vhost-user:/tmp/a --engine memcpy").unwrap_err().contains("twice"));
        assert!(p("--engine memcpy").unwrap_err().contains("--port"));
        assert!(p("--port vhost-user:/tmp/a --engine memcpy --duration -1").is_err());
        assert!(p("--port vhost-user:/tmp/a --engine memcpy --pmd-cores x").is_err());
        assert!(p("--port vhost-user:/tmp/a --engine memcpy --bogus").unwrap_err().contains("--bogus"));
        let a = p("--port sink --port sink --port sink --engine memcpy --pmd-cores 0,1 --port-pmd 2:1").unwrap();
        assert_eq!(a.pair_pmds(), [vec![0], vec![1], vec![1]]);
        assert!(p("--port sink --engine memcpy --pmd-cores 0,1 --port-pmd 0:2").is_err(), "no PMD 2");
        assert!(p("--port sink --engine memcpy --pmd-cores 0,1 --port-pmd x").is_err());
    }

    #[test]
    fn queue_pairs_go_round_robin_and_pins_override_it() {
        let a = p("--port vhost-user:/a --port vhost-user:/b --port sink --engine memcpy --pmd-cores 0,1 \
                   --queue-pairs 2")
        .unwrap();
        // Pair j of port i on PMD (i + j) % 2: both pairs of a 2-queue guest on different PMDs,
        // pair 0 of consecutive ports too.
        assert_eq!(a.pair_pmds(), [vec![0, 1], vec![1, 0], vec![0]]);
        let a = p("--port vhost-user:/a --port vhost-user:/b --engine memcpy --pmd-cores 3,4,5").unwrap();
        assert_eq!(a.pair_pmds(), [vec![0, 1, 2, 0], vec![1, 2, 0, 1]], "4 pairs by default, 3 PMDs");
        // --port-pmd pins every pair of a port; --qp-pmd one pair, over --port-pmd.
        let a = p("--port vhost-user:/a --port vhost-user:/b --engine memcpy --pmd-cores 0,1 --queue-pairs 3 \
                   --port-pmd 1:0 --qp-pmd 1:2:1 --qp-pmd 0:0:1")
        .unwrap();
        assert_eq!(a.pair_pmds(), [vec![1, 1, 0], vec![0, 0, 1]]);
        // One PMD: everything on it.
        let a = p("--port vhost-user:/a --engine memcpy --queue-pairs 2").unwrap();
        assert_eq!(a.pair_pmds(), [vec![0, 0]]);
    }

    #[test]
    fn bad_queue_pair_pins_are_refused_with_the_reason() {
        let base = "--port vhost-user:/a --port sink --engine memcpy --pmd-cores 0,1 --queue-pairs 2";
        let e = p(&format!("{base} --qp-pmd 0:2:0")).unwrap_err();
        assert!(e.contains("--qp-pmd 0:2:0") && e.contains("port 0 has 2 queue pair(s)"), "{e}");
        assert!(p(&format!("{base} --qp-pmd 0:1:2")).unwrap_err().contains("2 PMDs"), "no PMD 2");
        assert!(p(&format!("{base} --qp-pmd 2:0:0")).unwrap_err().contains("2 ports"), "no port 2");
        assert!(p(&format!("{base} --qp-pmd 1:1:0")).is_err(), "a sink has one pair");
        for bad in ["0:1", "0:1:2:3", "a:1:0", "0:-1:0", ":"] {
            assert!(p(&format!("{base} --qp-pmd {bad}")).unwrap_err().contains("PORT:PAIR:PMD"), "{bad}");
        }
        assert!(p("--port vhost-user:/a --engine memcpy --queue-pairs 0").is_err());
        assert!(p("--port vhost-user:/a --engine memcpy --queue-pairs 65").is_err());
    }

    #[test]
    fn dmadev_and_dsa_need_a_device_per_pmd() {
        let base = "--port vhost-user:/a --port vhost-user:/b --pmd-cores 0,1";
        assert!(p(&format!("{base} --engine dmadev:dma_skeleton0,dma_skeleton1")).is_ok());
        assert!(p(&format!("{base} --engine dsa:wq0.0,wq0.1")).is_ok());
        assert!(p(&format!("{base} --engine dsa:model")).is_ok(), "a model per PMD");
        let e = p(&format!("{base} --engine dmadev:dma_skeleton0")).unwrap_err();
        assert!(e.contains("1 device(s) for 2 PMD(s)"), "{e}");
        assert!(p(&format!("{base} --engine dsa:wq0.0")).unwrap_err().contains("one per PMD"));
        assert!(p("--port sink --engine dmadev:a,b").unwrap_err().contains("2 device(s) for 1 PMD(s)"));
        assert!(p("--port sink --engine dmadev:a").is_ok());
    }

    #[test]
    fn ctl_words_become_one_json_request() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(ctl_request(&w("show")).unwrap(), r#"{"cmd":"show"}"#);
        assert_eq!(ctl_request(&w("set-cpu-below 512")).unwrap(), r#"{"bytes":512,"cmd":"set-cpu-below"}"#);
        assert_eq!(
            ctl_request(&w("set-fallback push-back")).unwrap(),
            r#"{"cmd":"set-fallback","policy":"push-back"}"#
        );
        assert_eq!(ctl_request(&w(r#"{"cmd":"stats"}"#)).unwrap(), r#"{"cmd":"stats"}"#);
        assert!(ctl_request(&w("set-cpu-below")).is_err());
        assert_eq!(ctl_request(&w("remove-port 3")).unwrap(), r#"{"cmd":"remove-port","port":"3"}"#);
        assert_eq!(ctl_request(&w("add-port /tmp/a.sock")).unwrap(), r#"{"cmd":"add-port","path":"/tmp/a.sock"}"#);
        assert_eq!(
            ctl_request(&w("add-port /tmp/a.sock 1")).unwrap(),
            r#"{"cmd":"add-port","path":"/tmp/a.sock","pmd":1}"#
        );
        assert!(ctl_request(&w("add-port /tmp/a.sock one")).is_err());
        let a = p("ctl /tmp/x.sock mac-table").unwrap();
        assert!(matches!(a.sub, Some(Sub::Ctl { ref command, .. }) if command == &["mac-table"]));
        assert!(p("ctl /tmp/x.sock").is_err(), "a command is needed");
    }

    #[test]
    fn engine_specs_parse() {
        assert_eq!("memcpy".parse(), Ok(EngineSpec::Memcpy));
        assert_eq!("worker".parse(), Ok(EngineSpec::Worker));
        assert_eq!("dmadev:dma_skeleton0".parse(), Ok(EngineSpec::Dmadev("dma_skeleton0".into())));
        assert!("dmadev:".parse::<EngineSpec>().is_err());
        assert_eq!("dsa:wq0.0".parse(), Ok(EngineSpec::Dsa("wq0.0".into())));
        assert_eq!("dsa:model".parse(), Ok(EngineSpec::Dsa("model".into())));
        assert!("dsa:".parse::<EngineSpec>().is_err());
        assert!("quantum".parse::<EngineSpec>().is_err());
    }

    #[test]
    fn learning_is_chosen_by_either_flag_with_its_table_settings() {
        let a = p("--port sink --engine memcpy --mac-learning").unwrap();
        assert_eq!(a.forward(), ForwardMode::Learning);
        let a = p("--port sink --engine memcpy --forward learning --mac-table-size 8 --mac-aging 2.5").unwrap();
        assert_eq!((a.forward(), a.mac_table_size, a.mac_aging), (ForwardMode::Learning, 8, 2.5));
        assert!(p("--port sink --engine memcpy --forward hub").is_err());
        assert!(p("--port sink --engine memcpy --mac-table-size 0").is_err());
        assert!(p("--port sink --engine memcpy --mac-aging forever").is_err());
    }

    #[test]
    fn help_documents_every_option_and_the_exit_codes() {
        let help = Args::command_for_help();
        for flag in [
            "--port",
            "--engine",
            "--eal-args",
            "--pmd-cores",
            "--forward",
            "--mac-learning",
            "--mac-table-size",
            "--mac-aging",
            "--cpu-below",
            "--stats-interval",
            "--duration",
            "--no-adaptive",
            "--ctl",
            "--port-pmd",
            "--qp-pmd",
            "--queue-pairs",
            "Exit codes",
        ] {
            assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
        }
    }

    impl Args {
        fn command_for_help() -> String {
            use clap::CommandFactory;
            Args::command().render_long_help().to_string()
        }
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
