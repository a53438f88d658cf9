//! The `copy_engine::conformance` suite on the DSA engine over the device model: dedicated and
//! shared WQs, small WQs and rings, and with page faults and "busy" injected, which the engine
//! must hide completely (page faults are finished by the CPU, busy is retried).

use copy_engine::conformance::{run_all, run_fault, run_policy};
use copy_engine_dsa::{BatchPolicy, DsaConfig, DsaEngine, ModelConfig, ModelFaults, ModelPortal, WqMode};

fn engine(model: ModelConfig, cfg: DsaConfig) -> DsaEngine<ModelPortal> {
    DsaEngine::model(model, cfg).expect("start model")
}

fn dedicated() -> DsaEngine<ModelPortal> {
    engine(ModelConfig::default(), DsaConfig::default())
}

fn shared_small_wq() -> DsaEngine<ModelPortal> {
    let m = ModelConfig { mode: WqMode::Shared, wq_size: 8, ..ModelConfig::default() };
    engine(m, DsaConfig { ring_size: 256, ..DsaConfig::default() })
}

fn faulty(mode: WqMode) -> DsaEngine<ModelPortal> {
    let faults = ModelFaults { page_fault: 0.05, busy: 0.05, seed: 9, ..ModelFaults::default() };
    let m = ModelConfig { mode, wq_size: 16, faults, ..ModelConfig::default() };
    engine(m, DsaConfig { ring_size: 128, batch: BatchPolicy { min_batch: 4, max_batch: 16 }, ..DsaConfig::default() })
}

fn unbatched_tiny_wq() -> DsaEngine<ModelPortal> {
    let m = ModelConfig { wq_size: 2, ..ModelConfig::default() };
    engine(m, DsaConfig { ring_size: 32, batch: BatchPolicy::never(), ..DsaConfig::default() })
}

#[test]
fn dsa_model_dedicated_wq_meets_the_engine_contract() {
    run_all(dedicated);
    run_all(unbatched_tiny_wq);
}

#[test]
fn dsa_model_shared_wq_meets_the_engine_contract() {
    run_all(shared_small_wq);
}

#[test]
fn dsa_model_with_page_faults_and_busy_meets_the_engine_contract() {
    run_all(|| faulty(WqMode::Dedicated));
    run_all(|| faulty(WqMode::Shared));
}

#[test]
fn dsa_model_under_the_policy_layer() {
    run_policy(dedicated);
    run_policy(|| faulty(WqMode::Shared));
}

#[test]
fn dsa_model_failures_are_reported_with_their_tickets() {
    run_fault(dedicated);
    run_fault(|| faulty(WqMode::Dedicated));
    run_fault(unbatched_tiny_wq);
}
