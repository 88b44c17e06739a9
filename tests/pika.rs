//! Any AMQP client can use the fleet: jobs published by Python's `pika` (tests/pika_client.py),
//! a matvec and a matmul, get their results on the results exchange. The test makes its own virtualenv with pika under
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
use starkscale_common::tensor::npy;
use starkscale_coordinator::CoordinatorConfig;
use starkscale_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

/// A Python with pika installed.
fn python_with_pika() -> PathBuf {
    support::python_venv("pika-venv", "pika", &["pika==1.3.2"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_client_submits_matvec_and_matmul_jobs_and_gets_their_results() {
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

    // A matvec job, and a matmul job whose Y comes back by key.
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();
    let keys = Keys::new(fleet.prefix.clone());
    let mut ids = Vec::new();
    for name in ["job-inline.json", "job-matmul-inline.json"] {
        let job = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_client.py");
        let (python, prefix, file) = (python.clone(), fleet.prefix.clone(), job.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .args([script, &prefix, &file, "300"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&job).unwrap()).unwrap();
        assert_eq!(result["job_id"], spec["job_id"]);
        assert_eq!(result["status"], "succeeded", "{result}");
        if spec["kind"] == "matmul" {
            let key = result["y_key"]
                .as_str()
                .expect("a matmul result names Y's key");
            let bytes = store.get(key).await.unwrap().expect("Y is stored");
            let (shape, values) = npy::parse_i32(&bytes).unwrap();
            let native = support::native_batch_y(&spec);
            assert_eq!(shape, vec![native.len(), native[0].len()]);
            assert_eq!(values, native.concat());
        } else {
            assert_eq!(result["y"], support::native_y(&spec));
        }
        ids.push(spec["job_id"].as_str().unwrap().to_string());
    }

    shutdown.cancel();
    coordinator.await.unwrap();
    worker.await.unwrap().unwrap();
    for id in &ids {
        store
            .delete(&[
                keys.result(id),
                keys.progress(id),
                keys.certificate(id),
                keys.y(id),
            ])
            .await
            .unwrap();
    }
    broker.delete_topology().await.unwrap();
}
