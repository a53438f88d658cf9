//! The `copy_engine::conformance` suite against both CPU engines: the engine contract, the policy
//! layer over each engine, and fault injection over each engine.

use copy_engine::conformance::{run_all, run_fault, run_policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};

fn worker() -> WorkerEngine {
    WorkerEngine::new(WorkerConfig::default()).expect("start worker engine")
}

fn small_ring_worker() -> WorkerEngine {
    WorkerEngine::new(WorkerConfig { ring_size: 16, ..WorkerConfig::default() }).expect("start worker engine")
}

#[test]
fn memcpy_engine_meets_the_engine_contract() {
    run_all(MemcpyEngine::default);
}

#[test]
fn memcpy_engine_under_the_policy_layer() {
    run_policy(MemcpyEngine::default);
}

#[test]
fn memcpy_engine_failures_are_reported_with_their_tickets() {
    run_fault(MemcpyEngine::default);
}

#[test]
fn worker_engine_meets_the_engine_contract() {
    // The default (parking) worker; the busy-polling one is covered by tests/worker.rs.
    run_all(worker);
}

#[test]
fn worker_engine_under_the_policy_layer() {
    run_policy(worker);
}

#[test]
fn worker_engine_failures_are_reported_with_their_tickets() {
    run_fault(worker);
    run_fault(small_ring_worker);
}
