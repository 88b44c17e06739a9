//! Any AMQP client can use the fleet: a job published by Python's `pika` (tests/pika_client.py)
//! gets its result on the results exchange. The test makes its own virtualenv with pika under
//! `~/.cache/starkscale/pika-venv` when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;
use std::process::Command;

use starkscale_cairo::Profile;
use starkscale_common::broker::{AmqpBroker, Topology};
use starkscale_common::config::{unique_prefix, FleetConfig, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::messages::Keys;
use starkscale_common::store::{RedisStore, Store};
use starkscale_coordinator::CoordinatorConfig;
use starkscale_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

/// A Python with pika installed.
fn python_with_pika() -> PathBuf {
    support::python_venv("pika-venv", "pika", &["pika==1.3.2"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_client_submits_a_job_and_gets_its_result() {
    let python = tokio::task::spawn_blocking(python_with_pika).await.unwrap();
    let fleet = FleetConfig::local(unique_prefix("pika"));
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(starkscale_coordinator::run(
        CoordinatorConfig {
            allow_test_profile: true,
            ..CoordinatorConfig::new(fleet.clone())
        },
        shutdown.clone(),
    ));
    let worker = tokio::spawn(starkscale_worker::run(
        WorkerConfig::new(fleet.clone(), Profile::Test),
        shutdown.clone(),
    ));
    // The topology exists once a service has declared it; declare it here too.
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, Topology::new(fleet.prefix.clone()))
        .await
        .unwrap();

    let job = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job-inline.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_client.py");
    let prefix = fleet.prefix.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script, &prefix, job, "300"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(job).unwrap()).unwrap();
    assert_eq!(result["job_id"], spec["job_id"]);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["y"], support::native_y(&spec));

    shutdown.cancel();
    coordinator.await.unwrap();
    worker.await.unwrap().unwrap();
    let keys = Keys::new(fleet.prefix.clone());
    let id = spec["job_id"].as_str().unwrap();
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();
    store
        .delete(&[keys.result(id), keys.progress(id), keys.certificate(id)])
        .await
        .unwrap();
    broker.delete_topology().await.unwrap();
}
