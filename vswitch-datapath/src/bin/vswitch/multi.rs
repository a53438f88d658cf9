//! Several PMD threads (`--pmd-cores` with more than one core): one thread per core, each with its
//! own copy engine and channel (a worker thread, a DSA model, or a dmadev device or DSA work queue
//! of its own: one DMA resource per PMD), its own packet pool and its own queue pairs.
//!
//! Queue pairs, not ports, are what PMDs own (`Args::pair_pmds`: round robin, pair j of port i on
//! PMD (i + j) % n, or pinned with `--port-pmd` / `--qp-pmd`). Every PMD that owns a pair of a
//! vhost-user port holds a shard of that port (a `VhostPort` with only its pairs); the port's
//! vhost-user device sends each pair's attach and detach to the PMD that owns it, and device-wide
//! detaches (a memory table, a reset) to every shard. No PMD ever touches another's state and no
//! lock is taken on the hot path.
//!
//! Pairs forwarding: a link from port A to port B runs on every PMD that holds a shard of A; it
//! sends to the PMD's own shard of B if it has one (and, while that shard has no pair attached,
//! through a lock-free ring to another PMD that serves B), else through a ring to the PMD of B's
//! pair 0. With MAC learning each PMD runs its own L2 switch over its ports and shards and one
//! trunk per other PMD (see `switch::l2`). Each PMD prints its own stats block (`pmdK t=...`).
//!
//! With `--ctl`, a dispatcher thread hands each request to every PMD and joins the answers;
//! `add-port` (MAC learning) adds the port to the PMD the request names or round robin, every pair
//! of it on that PMD, and `remove-port` removes every shard of it, each drained on its PMD.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use log::{info, warn};
use serde_json::{json, Value};
use vswitch_datapath::switch::control::{self, CtlRequest, CtlServer, Request};
use vswitch_datapath::switch::cross_port::{CrossRxPort, CrossTxPort, TrunkPort};
use vswitch_datapath::switch::vhost_port::ShardSet;
use vswitch_datapath::switch::xring::{xring, XConsumer, XProducer};
use vswitch_datapath::vhost_user::{DeviceConfig, Shard, VhostUserServer};
use vswitch_datapath::{LearningConfig, PacketPool, Pmd, Port, PortCommand, SinkPort, SourcePort, VhostPort};

use super::{pin_to, Args, EngineSpec, ForwardMode, PortSpec, CHECK_EVERY, DATA_ROOM, POOL_PACKETS};

/// Frames a cross-PMD ring holds.
const RING_SLOTS: usize = 512;

/// A port as a PMD thread builds it (what crosses to the thread is `Send`).
enum Build {
    /// A vhost-user port (or shard of one): its name, the pairs assigned here, and the shard set
    /// when several PMDs serve it.
    Vhost(String, Vec<usize>, Option<Arc<ShardSet>>),
    Sink(String),
    Source(String, usize),
    CrossTx(String, XProducer),
    CrossRx(String, XConsumer),
    Trunk(String, XProducer, XConsumer, usize),
}

/// A link of a PMD: from, to, and where to send while `to` is down.
type LinkPlan = (usize, usize, Option<usize>);

/// What the control plane asks of one PMD thread.
enum ToPmd {
    /// A request of the control socket, answered by `control::answer`.
    Ctl(CtlRequest),
    /// Add an unattached vhost-user port named so; answer its index.
    AddPort(String, mpsc::Sender<usize>),
    /// Remove (drain) every port so named; answer the indexes removed.
    RemovePort(String, mpsc::Sender<Vec<usize>>),
}

/// What one PMD thread runs: its core, its ports (in index order) and its links.
struct Plan {
    core: usize,
    /// Control requests for this PMD (from the dispatcher), with `--ctl`.
    ctl: Option<mpsc::Receiver<ToPmd>>,
    ports: Vec<Build>,
    links: Vec<LinkPlan>,
    commands: mpsc::Receiver<PortCommand>,
}

/// One PMD's copy engine, opened before the PMD threads start.
enum PmdEngine {
    Memcpy,
    Worker,
    #[cfg(feature = "dsa")]
    DsaModel(copy_engine_dsa::DsaEngine<copy_engine_dsa::ModelPortal>),
    #[cfg(feature = "dsa")]
    Dsa(copy_engine_dsa::DsaEngine<copy_engine_dsa::HwPortal>),
    #[cfg(feature = "dmadev")]
    Dmadev(copy_engine_dmadev::DmadevEngine),
}

/// What keeps the engines' environment alive (DPDK's EAL) until the PMDs are gone.
#[derive(Default)]
struct EngineEnv {
    #[cfg(feature = "dmadev")]
    _eal: Option<copy_engine_dmadev::Eal>,
}

/// Opens one engine per PMD: `dmadev:a,b` device i for PMD i, `dsa:wqA,wqB` likewise, `dsa:model`
/// a model each. `Args::validate` checked that there is one device per PMD.
fn open_engines(args: &Args, n: usize) -> Result<(Vec<PmdEngine>, EngineEnv), String> {
    let env = EngineEnv::default();
    match &args.engine {
        Some(EngineSpec::Worker) => Ok(((0..n).map(|_| PmdEngine::Worker).collect(), env)),
        Some(EngineSpec::Memcpy) | None => Ok(((0..n).map(|_| PmdEngine::Memcpy).collect(), env)),
        Some(EngineSpec::Dsa(wqs)) => open_dsa(wqs, n).map(|e| (e, env)),
        Some(EngineSpec::Dmadev(names)) => open_dmadev(args, names, n),
    }
}

#[cfg(feature = "dsa")]
fn open_dsa(wqs: &str, n: usize) -> Result<Vec<PmdEngine>, String> {
    use copy_engine_dsa::{DsaConfig, DsaEngine, ModelConfig};
    let names: Vec<&str> = if wqs == "model" { vec!["model"; n] } else { wqs.split(',').collect() };
    names
        .iter()
        .enumerate()
        .map(|(k, &wq)| {
            let e = if wq == "model" {
                DsaEngine::model(ModelConfig::default(), DsaConfig::default())
                    .map(PmdEngine::DsaModel)
                    .map_err(|e| e.to_string())
            } else {
                DsaEngine::open(wq, DsaConfig::default()).map(PmdEngine::Dsa).map_err(|e| format!("dsa {wq:?}: {e}"))
            };
            e.map_err(|e| format!("pmd{k}: {e}"))
        })
        .collect()
}

#[cfg(not(feature = "dsa"))]
fn open_dsa(wqs: &str, _n: usize) -> Result<Vec<PmdEngine>, String> {
    Err(format!("dsa {wqs:?}: this build has no DSA engine: rebuild with `--features dsa`"))
}

/// EAL once (default: DPDK's dma_skeleton, one vdev per `dma_skeleton*` name), then device i for
/// PMD i.
#[cfg(feature = "dmadev")]
fn open_dmadev(args: &Args, names: &str, _n: usize) -> Result<(Vec<PmdEngine>, EngineEnv), String> {
    use copy_engine_dmadev::{DmadevEngine, EalBuilder};
    let names: Vec<&str> = names.split(',').collect();
    let mut b = match &args.eal_args {
        Some(extra) => extra.split_whitespace().fold(EalBuilder::new(), |b, a| b.arg(a)),
        None => names
            .iter()
            .filter(|d| d.starts_with("dma_skeleton") && **d != "dma_skeleton0")
            .fold(EalBuilder::skeleton(), |b, d| b.vdev(*d)),
    };
    b = b.file_prefix(format!("vswitch-{}", std::process::id()));
    let eal = b.init().map_err(|e| format!("EAL: {e}"))?;
    let engines = names
        .iter()
        .enumerate()
        .map(|(k, &d)| {
            DmadevEngine::open(&eal, d, 1024).map(PmdEngine::Dmadev).map_err(|e| format!("pmd{k}: dmadev {d:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok((engines, EngineEnv { _eal: Some(eal) }))
}

#[cfg(not(feature = "dmadev"))]
fn open_dmadev(_args: &Args, names: &str, _n: usize) -> Result<(Vec<PmdEngine>, EngineEnv), String> {
    Err(format!(
        "dmadev {names:?}: this build has no dmadev engine: rebuild with `--features dmadev` (needs libdpdk-dev)"
    ))
}

/// The vhost-user servers, by port index (`None`: not a vhost-user port, or removed).
type Servers = Arc<Mutex<Vec<Option<VhostUserServer>>>>;

pub(super) fn run(args: &Args, policy: Policy, stop: &AtomicBool) -> Result<(), String> {
    let n = args.pmd_cores.len();
    let (engines, _env) = open_engines(args, n)?;
    let mut plans: Vec<Plan> = Vec::new();
    let mut senders = Vec::new();
    for &core in &args.pmd_cores {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        plans.push(Plan { core, ctl: None, ports: Vec::new(), links: Vec::new(), commands: rx });
    }
    let pair_pmds = args.pair_pmds();
    // Every real port on the PMDs that hold it, its home (pair 0's PMD) first: (pmd, index there).
    let mut at: Vec<Vec<(usize, usize)>> = Vec::new();
    let servers: Servers = Arc::new(Mutex::new(Vec::new()));
    for (i, spec) in args.ports.iter().enumerate() {
        let mut shards: Vec<usize> = Vec::new();
        for &k in &pair_pmds[i] {
            if !shards.contains(&k) {
                shards.push(k);
            }
        }
        let set = (shards.len() > 1).then(|| ShardSet::new(n));
        let mut here = Vec::new();
        for &k in &shards {
            let local = plans[k].ports.len();
            here.push((k, local));
            let mine: Vec<usize> = (0..pair_pmds[i].len()).filter(|&j| pair_pmds[i][j] == k).collect();
            plans[k].ports.push(match spec {
                PortSpec::VhostUser(_) => Build::Vhost(format!("vhost{i}"), mine, set.clone()),
                PortSpec::Sink => Build::Sink(format!("sink{i}")),
                PortSpec::Source(len) => Build::Source(format!("source{i}"), *len),
            });
        }
        let server = match spec {
            PortSpec::VhostUser(path) => {
                let (k0, l0) = here[0];
                let mut cfg = DeviceConfig::new(format!("vhost{i}"), l0, senders[k0].clone(), Duration::from_secs(10));
                cfg.shards = here[1..].iter().map(|&(k, l)| Shard { pmd: senders[k].clone(), port: l }).collect();
                cfg.pair_shard = pair_pmds[i].iter().map(|k| shards.iter().position(|s| s == k).unwrap_or(0)).collect();
                Some(
                    VhostUserServer::start_with_queue_pairs(path, cfg, args.queue_pairs)
                        .map_err(|e| format!("port {i} ({path}): {e}"))?,
                )
            }
            _ => None,
        };
        servers.lock().expect("not poisoned").push(server);
        at.push(here);
    }
    let learning = args.forward() == ForwardMode::Learning;
    if learning {
        // A full mesh of trunks: one per pair of PMDs, a ring each way.
        for x in 0..n {
            for y in x + 1..n {
                let (to_y, from_x) = xring(RING_SLOTS, DATA_ROOM);
                let (to_x, from_y) = xring(RING_SLOTS, DATA_ROOM);
                plans[x].ports.push(Build::Trunk(format!("trunk-pmd{y}"), to_y, from_y, y));
                plans[y].ports.push(Build::Trunk(format!("trunk-pmd{x}"), to_x, from_x, x));
            }
        }
    }
    for pair in (0..args.ports.len()).collect::<Vec<_>>().chunks_exact(2).filter(|_| !learning) {
        for (from, to) in [(pair[0], pair[1]), (pair[1], pair[0])] {
            for &(kf, lf) in &at[from].clone() {
                let local = at[to].iter().find(|(k, _)| *k == kf).map(|&(_, l)| l);
                // The PMD a ring from kf to `to` goes to: its home, or (kf being a shard of `to`
                // itself) another shard, for while kf's own has no pair attached.
                let Some(&(kt, lt)) = at[to].iter().find(|(k, _)| *k != kf) else {
                    plans[kf].links.push((lf, local.expect("to is on kf, the only PMD that holds it"), None));
                    continue;
                };
                let (p, c) = xring(RING_SLOTS, DATA_ROOM);
                let tx = plans[kf].ports.len();
                plans[kf].ports.push(Build::CrossTx(format!("to-pmd{kt}-port{to}"), p));
                plans[kf].links.push(match local {
                    Some(l) => (lf, l, Some(tx)),
                    None => (lf, tx, None),
                });
                let rx = plans[kt].ports.len();
                plans[kt].ports.push(Build::CrossRx(format!("from-pmd{kf}-port{from}"), c));
                plans[kt].links.push((rx, lt, None));
            }
        }
    }
    let ctl_server = match &args.ctl {
        Some(path) => Some(start_ctl(path, &mut plans, senders.clone(), servers.clone(), args)?),
        None => None,
    };
    drop(senders);
    let mode = if learning { "MAC learning on each, trunks between them" } else { "ports cross-connected in pairs" };
    let engine = match &args.engine {
        Some(EngineSpec::Worker) => "worker".to_string(),
        Some(EngineSpec::Dmadev(d)) => format!("dmadev {d}"),
        Some(EngineSpec::Dsa(d)) => format!("dsa {d}"),
        _ => "memcpy".to_string(),
    };
    println!("vswitch: engine {engine} (one per PMD), {n} PMD threads, {mode}:");
    for (i, here) in at.iter().enumerate() {
        let k = here[0].0;
        let mut line = format!("  port {i} on pmd{k} (core {})", args.pmd_cores[k]);
        if matches!(args.ports[i], PortSpec::VhostUser(_)) {
            let by: Vec<String> = pair_pmds[i].iter().enumerate().map(|(j, k)| format!("pair {j} on pmd{k}")).collect();
            line += &format!(", queue pairs: {}", by.join(", "));
        }
        println!("{line}");
    }
    let start = Instant::now();
    let result: Result<(), String> = std::thread::scope(|s| {
        let threads: Vec<_> = plans
            .into_iter()
            .zip(engines)
            .enumerate()
            .map(|(k, (plan, engine))| {
                std::thread::Builder::new()
                    .name(format!("pmd{k}"))
                    .spawn_scoped(s, move || pmd_thread(k, plan, engine, args, policy, stop, start))
                    .map_err(|e| format!("pmd{k}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let mut first_err = Ok(());
        for t in threads {
            let r = t.join().unwrap_or_else(|_| Err("a PMD thread panicked".into()));
            if first_err.is_ok() {
                first_err = r;
            }
            // One PMD failing stops the others.
            stop.store(true, Ordering::Relaxed);
        }
        first_err
    });
    let servers = std::mem::take(&mut *servers.lock().expect("not poisoned"));
    for s in servers.into_iter().flatten() {
        s.stop();
    }
    if let Some(c) = ctl_server {
        c.stop();
    }
    println!("vswitch: stopped");
    result
}

/// The control socket with several PMDs: a dispatcher thread hands each request to every PMD and
/// joins their answers ([`control::merge_answers`]), and carries out port changes.
fn start_ctl(
    path: &std::path::Path,
    plans: &mut [Plan],
    port_txs: Vec<mpsc::Sender<PortCommand>>,
    servers: Servers,
    args: &Args,
) -> Result<CtlServer, String> {
    let (server, rx) = CtlServer::start(path).map_err(|e| format!("--ctl {}: {e}", path.display()))?;
    let mut pmds = Vec::new();
    for p in plans.iter_mut() {
        let (tx, prx) = mpsc::channel();
        p.ctl = Some(prx);
        pmds.push(tx);
    }
    let mut d = Dispatcher {
        pmds,
        port_txs,
        servers,
        learning: args.forward() == ForwardMode::Learning,
        queue_pairs: args.queue_pairs,
        next_pmd: args.ports.len(),
        names: HashMap::new(),
    };
    for (i, spec) in args.ports.iter().enumerate() {
        if matches!(spec, PortSpec::VhostUser(_)) {
            d.names.insert(format!("vhost{i}"), i);
        }
    }
    std::thread::Builder::new()
        .name("vswitch-ctl-dispatch".into())
        .spawn(move || {
            for req in rx {
                let a = match &req.request {
                    Request::AddPort { path, pmd } => d.add_port(path, *pmd),
                    Request::RemovePort { port } => d.remove_port(port),
                    other => d.ask_all(other),
                };
                let _ = req.reply.send(a);
            }
        })
        .map_err(|e| format!("--ctl: {e}"))?;
    Ok(server)
}

/// The control thread's view of the PMDs (it owns no port: the PMDs do).
struct Dispatcher {
    pmds: Vec<mpsc::Sender<ToPmd>>,
    port_txs: Vec<mpsc::Sender<PortCommand>>,
    servers: Servers,
    learning: bool,
    queue_pairs: usize,
    /// Round robin for ports added without a PMD.
    next_pmd: usize,
    /// Vhost-user ports by name: their index in `servers`.
    names: HashMap<String, usize>,
}

impl Dispatcher {
    /// Every PMD answers `request`; the answers are joined in PMD order.
    fn ask_all(&self, request: &Request) -> Value {
        // A reply channel per PMD, read in PMD order: the joined lists are in PMD order.
        let waits: Vec<_> = self
            .pmds
            .iter()
            .filter_map(|p| {
                let (tx, arx) = mpsc::channel();
                p.send(ToPmd::Ctl(CtlRequest { request: request.clone(), reply: tx })).ok().map(|()| arx)
            })
            .collect();
        let answers: Vec<_> = waits.iter().map_while(|w| w.recv_timeout(control::ANSWER_TIMEOUT).ok()).collect();
        if answers.len() < self.pmds.len() {
            control::error_answer("not every PMD answered")
        } else {
            control::merge_answers(answers)
        }
    }

    /// `add-port`: the port on PMD `pmd` (or the next one round robin), then its socket; every
    /// queue pair of it on that PMD.
    fn add_port(&mut self, path: &str, pmd: Option<usize>) -> Value {
        if !self.learning {
            return control::error_answer("add-port needs --forward learning (pairs are fixed at start)");
        }
        let n = self.pmds.len();
        let k = match pmd {
            Some(k) if k >= n => return control::error_answer(format!("add-port: no PMD {k} (there are {n})")),
            Some(k) => k,
            None => self.next_pmd % n,
        };
        let i = self.servers.lock().expect("not poisoned").len();
        let name = format!("vhost{i}");
        // The port first, so that the device's first attach finds it.
        let (tx, rx) = mpsc::channel();
        if self.pmds[k].send(ToPmd::AddPort(name.clone(), tx)).is_err() {
            return control::error_answer(format!("pmd{k} has stopped"));
        }
        let Ok(local) = rx.recv_timeout(control::ANSWER_TIMEOUT) else {
            return control::error_answer(format!("pmd{k} did not answer"));
        };
        let cfg = DeviceConfig::new(name.clone(), local, self.port_txs[k].clone(), Duration::from_secs(10));
        match VhostUserServer::start_with_queue_pairs(path, cfg, self.queue_pairs) {
            Ok(server) => {
                if pmd.is_none() {
                    self.next_pmd += 1;
                }
                self.servers.lock().expect("not poisoned").push(Some(server));
                self.names.insert(name.clone(), i);
                info!("port {name} added on pmd{k}: vhost-user server on {path}");
                json!({ "ok": true, "port": name, "index": i, "pmd": k, "index_on_pmd": local })
            }
            Err(e) => {
                // The port stands empty: take it out again (a removed stand-in keeps its index on
                // the PMD, and its name is not given again).
                let (tx, _rx) = mpsc::channel();
                let _ = self.pmds[k].send(ToPmd::RemovePort(name, tx));
                self.servers.lock().expect("not poisoned").push(None);
                control::error_answer(format!("add-port {path}: {e}"))
            }
        }
    }

    /// `remove-port NAME|INDEX`: every shard of the port drained on its PMD, then its socket closed.
    fn remove_port(&mut self, port: &str) -> Value {
        let name = match port.parse::<usize>() {
            Ok(i) => format!("vhost{i}"),
            Err(_) => port.to_string(),
        };
        let Some(&i) = self.names.get(&name) else {
            return control::error_answer(format!("no vhost-user port {port:?}"));
        };
        let waits: Vec<_> = self
            .pmds
            .iter()
            .filter_map(|p| {
                let (tx, rx) = mpsc::channel();
                p.send(ToPmd::RemovePort(name.clone(), tx)).ok().map(|()| rx)
            })
            .collect();
        let mut on = Vec::new();
        for (k, w) in waits.iter().enumerate() {
            match w.recv_timeout(control::ANSWER_TIMEOUT) {
                Ok(removed) if !removed.is_empty() => on.push(k),
                Ok(_) => {}
                Err(_) => return control::error_answer(format!("pmd{k} did not answer")),
            }
        }
        if on.is_empty() {
            return control::error_answer(format!("port {port:?} was removed already"));
        }
        self.names.remove(&name);
        // The socket's threads detach through the PMDs (which no longer have the port and
        // answer at once).
        if let Some(server) = self.servers.lock().expect("not poisoned").get_mut(i).and_then(Option::take) {
            server.stop();
        }
        info!("port {name} removed (drained on {on:?})");
        json!({ "ok": true, "port": name, "index": i, "pmds": on })
    }
}

fn pmd_thread(
    k: usize,
    plan: Plan,
    engine: PmdEngine,
    args: &Args,
    policy: Policy,
    stop: &AtomicBool,
    start: Instant,
) -> Result<(), String> {
    pin_to(plan.core).map_err(|e| format!("--pmd-cores: {e}"))?;
    match engine {
        PmdEngine::Worker => {
            let e = WorkerEngine::new(WorkerConfig::default()).map_err(|e| format!("pmd{k}: worker engine: {e}"))?;
            serve(k, Channel::new(e, policy), plan, args, stop, start)
        }
        PmdEngine::Memcpy => serve(k, Channel::new(MemcpyEngine::default(), policy), plan, args, stop, start),
        #[cfg(feature = "dsa")]
        PmdEngine::DsaModel(e) => serve(k, Channel::new(e, policy), plan, args, stop, start),
        #[cfg(feature = "dsa")]
        PmdEngine::Dsa(e) => serve(k, Channel::new(e, policy), plan, args, stop, start),
        #[cfg(feature = "dmadev")]
        PmdEngine::Dmadev(e) => serve(k, Channel::new(e, policy), plan, args, stop, start),
    }
}

fn serve<E: CopyEngine>(
    k: usize,
    chan: Channel<E>,
    plan: Plan,
    args: &Args,
    stop: &AtomicBool,
    start: Instant,
) -> Result<(), String> {
    let engine_name = chan.with_engine(|e| e.info().name.clone());
    let mut pmd = Pmd::new(chan, PacketPool::new(POOL_PACKETS, DATA_ROOM));
    pmd.set_commands(plan.commands);
    for b in plan.ports {
        let port: Box<dyn Port<E>> = match b {
            Build::Vhost(name, pairs, set) => {
                let p = match set {
                    Some(set) => VhostPort::shard(name, set, k),
                    None => VhostPort::unattached(name),
                };
                Box::new(p.with_assigned_pairs(pairs))
            }
            Build::Sink(name) => Box::new(SinkPort::new(name)),
            Build::Source(name, len) => Box::new(SourcePort::new(name, len)),
            Build::CrossTx(name, p) => Box::new(CrossTxPort::new(name, p)),
            Build::CrossRx(name, c) => Box::new(CrossRxPort::new(name, c)),
            Build::Trunk(name, p, c, peer) => Box::new(TrunkPort::new(name, p, c).with_peer(peer)),
        };
        pmd.add_port(port);
    }
    for &(from, to, spill) in &plan.links {
        match spill {
            Some(s) => pmd.connect_with_spill(from, to, s),
            None => pmd.connect(from, to),
        }
    }
    if args.forward() == ForwardMode::Learning {
        pmd.enable_learning(LearningConfig {
            table_size: args.mac_table_size as usize,
            aging: Duration::from_secs_f64(args.mac_aging),
        });
    }
    let every = args.stats_interval();
    let mut next_stats = every.map(|d| start + d);
    let mut iterations = 0u64;
    loop {
        pmd.run_once();
        iterations += 1;
        if iterations % CHECK_EVERY != 0 {
            continue;
        }
        if let Some(rx) = &plan.ctl {
            if let Ok(msg) = rx.try_recv() {
                control_request(k, &mut pmd, msg, plan.core, &engine_name, start);
            }
        }
        if stop.load(Ordering::Relaxed) || args.duration().is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if let (Some(at), Some(every)) = (next_stats, every) {
            let now = Instant::now();
            if now >= at {
                print_stats(k, &pmd, now - start);
                next_stats = Some(if now >= at + every { now + every } else { at + every });
            }
        }
    }
    pmd.stop();
    print_stats(k, &pmd, start.elapsed());
    Ok(())
}

/// One control message, on PMD `k`'s thread between two bursts.
fn control_request<E: CopyEngine>(
    k: usize,
    pmd: &mut Pmd<E>,
    msg: ToPmd,
    core: usize,
    engine_name: &str,
    start: Instant,
) {
    match msg {
        ToPmd::Ctl(req) => {
            let info = json!({
                "pmd": k,
                "core": core,
                "engine": engine_name,
                "uptime_s": start.elapsed().as_secs_f64(),
            });
            let _ = req.reply.send(control::answer(pmd, &req.request, &info));
        }
        ToPmd::AddPort(name, reply) => {
            let i = pmd.add_port(Box::new(VhostPort::unattached(name)));
            let _ = reply.send(i);
        }
        ToPmd::RemovePort(name, reply) => {
            let mine: Vec<usize> = (0..pmd.port_count())
                .filter(|&i| pmd.port(i).name() == name && pmd.port(i).as_any().is::<VhostPort>())
                .collect();
            let removed: Vec<usize> = mine.into_iter().filter(|&i| pmd.remove_port(i).is_some()).collect();
            if removed.is_empty() {
                warn!("pmd{k}: no port {name} to remove");
            }
            let _ = reply.send(removed);
        }
    }
}

fn print_stats<E: CopyEngine>(k: usize, pmd: &Pmd<E>, t: Duration) {
    let c = pmd.channel().stats();
    let m = pmd.stats();
    let mut out = format!(
        "pmd{k} t={:.1}s  copies: {} offloaded, {} by CPU ({} small, {} engine lagging, {} ring full, {} retried), \
         {} in flight, {} forwarded, busy {} ns/packet\n",
        t.as_secs_f64(),
        c.offloaded,
        c.cpu_copies(),
        c.cpu_small,
        c.cpu_adaptive,
        c.cpu_ring_full,
        c.cpu_retry,
        pmd.channel().in_flight(),
        m.forwarded,
        m.busy_ns_per_packet().map_or("-".to_string(), |ns| format!("{ns:.0}")),
    );
    if let Some(l2) = pmd.l2() {
        let (s, t) = (l2.stats(), l2.table().stats());
        out += &format!(
            "  l2: {} MACs, unicast {}, flooded {} ({} copies), filtered {}, no target {}, runts {}, learned {}, \
             moved {}, evicted {}\n",
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
    for i in 0..pmd.port_count() {
        let p = pmd.port(i);
        let st = p.stats();
        let pairs = match p.as_any().downcast_ref::<VhostPort>() {
            Some(v) => format!(", pairs {:?}", v.attached_pairs()),
            None => String::new(),
        };
        out += &format!(
            "  {}: rx {} pkts {} bytes, tx {} pkts {} bytes, drops {}, pushed back {}, in flight {}{pairs}\n",
            p.name(),
            st.rx_packets,
            st.rx_bytes,
            st.tx_packets,
            st.tx_bytes,
            st.drops,
            st.tx_pushed_back,
            st.in_flight
        );
    }
    // One write: the blocks of two PMDs do not interleave.
    print!("{out}");
}
