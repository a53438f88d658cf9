//! Several PMD threads (`--pmd-cores` with more than one core): one thread per core, each with its
//! own copy engine and channel, its own packet pool and its own ports; ports are cross-connected in
//! pairs as with one PMD. A link between ports of two PMDs goes through a lock-free frame ring
//! (one per direction), so no PMD ever touches another's state and no lock is taken on the hot
//! path. With MAC learning each PMD runs its own L2 switch over its ports and one trunk per other
//! PMD (see `switch::l2`). Each PMD prints its own stats block (`pmdK t=...`). With `--ctl`, every request goes to
//! every PMD and the answers are joined.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::switch::control::{self, CtlRequest, CtlServer};
use vswitch_datapath::switch::cross_port::{CrossRxPort, CrossTxPort, TrunkPort};
use vswitch_datapath::switch::xring::{xring, XConsumer, XProducer};
use vswitch_datapath::vhost_user::{DeviceConfig, VhostUserServer};
use vswitch_datapath::{LearningConfig, PacketPool, Pmd, Port, PortCommand, SinkPort, SourcePort, VhostPort};

use super::{pin_to, Args, EngineSpec, ForwardMode, PortSpec, CHECK_EVERY, DATA_ROOM, POOL_PACKETS};

/// Frames a cross-PMD ring holds.
const RING_SLOTS: usize = 512;

/// A port as a PMD thread builds it (what crosses to the thread is `Send`).
enum Build {
    Vhost(String),
    Sink(String),
    Source(String, usize),
    CrossTx(String, XProducer),
    CrossRx(String, XConsumer),
    Trunk(String, XProducer, XConsumer),
}

/// What one PMD thread runs: its core, its ports (in index order) and its links.
struct Plan {
    core: usize,
    /// Control requests for this PMD (from the dispatcher), with `--ctl`.
    ctl: Option<mpsc::Receiver<CtlRequest>>,
    ports: Vec<Build>,
    links: Vec<(usize, usize)>,
    commands: mpsc::Receiver<PortCommand>,
}

pub(super) fn run(args: &Args, policy: Policy, stop: &AtomicBool) -> Result<(), String> {
    let n = args.pmd_cores.len();
    let mut plans: Vec<Plan> = Vec::new();
    let mut senders = Vec::new();
    for &core in &args.pmd_cores {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        plans.push(Plan { core, ctl: None, ports: Vec::new(), links: Vec::new(), commands: rx });
    }
    // Every real port on its PMD: (pmd, index there).
    let mut at = Vec::new();
    let mut servers = Vec::new();
    for (i, spec) in args.ports.iter().enumerate() {
        let k = args.pmd_of(i);
        let local = plans[k].ports.len();
        at.push((k, local));
        match spec {
            PortSpec::VhostUser(path) => {
                let name = format!("vhost{i}");
                let cfg = DeviceConfig {
                    name: name.clone(),
                    port: local,
                    pmd: senders[k].clone(),
                    detach_timeout: Duration::from_secs(10),
                };
                servers.push(VhostUserServer::start(path, cfg).map_err(|e| format!("port {i} ({path}): {e}"))?);
                plans[k].ports.push(Build::Vhost(name));
            }
            PortSpec::Sink => plans[k].ports.push(Build::Sink(format!("sink{i}"))),
            PortSpec::Source(len) => plans[k].ports.push(Build::Source(format!("source{i}"), *len)),
        }
    }
    drop(senders);
    let learning = args.forward() == ForwardMode::Learning;
    if learning {
        // A full mesh of trunks: one per pair of PMDs, a ring each way.
        for x in 0..n {
            for y in x + 1..n {
                let (to_y, from_x) = xring(RING_SLOTS, DATA_ROOM);
                let (to_x, from_y) = xring(RING_SLOTS, DATA_ROOM);
                plans[x].ports.push(Build::Trunk(format!("trunk-pmd{y}"), to_y, from_y));
                plans[y].ports.push(Build::Trunk(format!("trunk-pmd{x}"), to_x, from_x));
            }
        }
    }
    for pair in (0..args.ports.len()).collect::<Vec<_>>().chunks_exact(2).filter(|_| !learning) {
        for (from, to) in [(pair[0], pair[1]), (pair[1], pair[0])] {
            let ((kf, lf), (kt, lt)) = (at[from], at[to]);
            if kf == kt {
                plans[kf].links.push((lf, lt));
                continue;
            }
            let (p, c) = xring(RING_SLOTS, DATA_ROOM);
            let tx = plans[kf].ports.len();
            plans[kf].ports.push(Build::CrossTx(format!("to-pmd{kt}-port{to}"), p));
            plans[kf].links.push((lf, tx));
            let rx = plans[kt].ports.len();
            plans[kt].ports.push(Build::CrossRx(format!("from-pmd{kf}-port{from}"), c));
            plans[kt].links.push((rx, lt));
        }
    }
    let engine = match &args.engine {
        Some(EngineSpec::Worker) => "worker (one per PMD)",
        _ => "memcpy",
    };
    let ctl_server = match &args.ctl {
        Some(path) => Some(start_ctl(path, &mut plans)?),
        None => None,
    };
    let mode = if learning { "MAC learning on each, trunks between them" } else { "ports cross-connected in pairs" };
    println!("vswitch: engine {engine}, {n} PMD threads, {mode}:");
    for (i, &(k, _)) in at.iter().enumerate() {
        println!("  port {i} on pmd{k} (core {})", args.pmd_cores[k]);
    }
    let start = Instant::now();
    let result: Result<(), String> = std::thread::scope(|s| {
        let threads: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(k, plan)| {
                std::thread::Builder::new()
                    .name(format!("pmd{k}"))
                    .spawn_scoped(s, move || pmd_thread(k, plan, args, policy, stop, start))
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
    for s in servers {
        s.stop();
    }
    if let Some(c) = ctl_server {
        c.stop();
    }
    println!("vswitch: stopped");
    result
}

/// The control socket with several PMDs: a dispatcher thread hands each request to every PMD and
/// joins their answers ([`control::merge_answers`]); port changes are refused (one PMD only).
fn start_ctl(path: &std::path::Path, plans: &mut [Plan]) -> Result<CtlServer, String> {
    let (server, rx) = CtlServer::start(path).map_err(|e| format!("--ctl {}: {e}", path.display()))?;
    let mut pmds = Vec::new();
    for p in plans.iter_mut() {
        let (tx, prx) = mpsc::channel();
        p.ctl = Some(prx);
        pmds.push(tx);
    }
    std::thread::Builder::new()
        .name("vswitch-ctl-dispatch".into())
        .spawn(move || {
            for req in rx {
                let a = if req.request.changes_ports() {
                    control::error_answer("adding and removing ports needs one PMD")
                } else {
                    // A reply channel per PMD, read in PMD order: the joined lists are in PMD order.
                    let waits: Vec<_> = pmds
                        .iter()
                        .filter_map(|p| {
                            let (tx, arx) = mpsc::channel();
                            p.send(CtlRequest { request: req.request.clone(), reply: tx }).ok().map(|()| arx)
                        })
                        .collect();
                    let answers: Vec<_> =
                        waits.iter().map_while(|w| w.recv_timeout(control::ANSWER_TIMEOUT).ok()).collect();
                    if answers.len() < pmds.len() {
                        control::error_answer("not every PMD answered")
                    } else {
                        control::merge_answers(answers)
                    }
                };
                let _ = req.reply.send(a);
            }
        })
        .map_err(|e| format!("--ctl: {e}"))?;
    Ok(server)
}

fn pmd_thread(
    k: usize,
    plan: Plan,
    args: &Args,
    policy: Policy,
    stop: &AtomicBool,
    start: Instant,
) -> Result<(), String> {
    pin_to(plan.core)?;
    match &args.engine {
        Some(EngineSpec::Worker) => {
            let e = WorkerEngine::new(WorkerConfig::default()).map_err(|e| format!("pmd{k}: worker engine: {e}"))?;
            serve(k, Channel::new(e, policy), plan, args, stop, start)
        }
        _ => serve(k, Channel::new(MemcpyEngine::default(), policy), plan, args, stop, start),
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
            Build::Vhost(name) => Box::new(VhostPort::unattached(name)),
            Build::Sink(name) => Box::new(SinkPort::new(name)),
            Build::Source(name, len) => Box::new(SourcePort::new(name, len)),
            Build::CrossTx(name, p) => Box::new(CrossTxPort::new(name, p)),
            Build::CrossRx(name, c) => Box::new(CrossRxPort::new(name, c)),
            Build::Trunk(name, p, c) => Box::new(TrunkPort::new(name, p, c)),
        };
        pmd.add_port(port);
    }
    for &(from, to) in &plan.links {
        pmd.connect(from, to);
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
            if let Ok(req) = rx.try_recv() {
                let info = serde_json::json!({
                    "pmd": k,
                    "core": plan.core,
                    "engine": engine_name,
                    "uptime_s": start.elapsed().as_secs_f64(),
                });
                let _ = req.reply.send(control::answer(&mut pmd, &req.request, &info));
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

fn print_stats<E: CopyEngine>(k: usize, pmd: &Pmd<E>, t: Duration) {
    let c = pmd.channel().stats();
    let mut out = format!(
        "pmd{k} t={:.1}s  copies: {} offloaded, {} by CPU ({} small, {} engine lagging, {} ring full, {} retried), \
         {} in flight, {} forwarded\n",
        t.as_secs_f64(),
        c.offloaded,
        c.cpu_copies(),
        c.cpu_small,
        c.cpu_adaptive,
        c.cpu_ring_full,
        c.cpu_retry,
        pmd.channel().in_flight(),
        pmd.stats().forwarded,
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
    for (name, st) in pmd.port_stats() {
        out += &format!(
            "  {name}: rx {} pkts {} bytes, tx {} pkts {} bytes, drops {}, pushed back {}, in flight {}\n",
            st.rx_packets, st.rx_bytes, st.tx_packets, st.tx_bytes, st.drops, st.tx_pushed_back, st.in_flight
        );
    }
    // One write: the blocks of two PMDs do not interleave.
    print!("{out}");
}
