//! Coordinator and worker together against the real RabbitMQ and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use rand::{Rng, SeedableRng};
use starkscale_cairo::verify_tile;
use starkscale_common::broker::{dead_letter_reason, AmqpBroker, Topology};
use starkscale_common::config::{unique_prefix, FleetConfig, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::messages::{JobResult, JobStatus};
use starkscale_common::store::RedisStore;
use starkscale_common::{Dtype, Matrix, Vector};
use starkscale_coordinator::CoordinatorConfig;
use starkscale_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    let delivery = tokio::time::timeout(Duration::from_secs(180), consumer.next())
        .await
        .expect("a delivery within 180 s")
        .expect("consumer open")
        .expect("delivery ok");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    delivery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_get_errors_and_a_good_job_gets_the_verified_product() {
    let prefix = unique_prefix("fleet");
    let topology = Topology::new(prefix.clone());
    let client = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    let mut results = client.subscribe_results("#").await.unwrap();
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(starkscale_coordinator::run(
        CoordinatorConfig {
            fleet: FleetConfig::local(prefix.clone()),
            max_attempts: 3,
            job_ttl_s: 600,
            allow_test_profile: true,
            max_job_bytes: 1 << 20,
        },
        shutdown.clone(),
    ));
    let worker = tokio::spawn(starkscale_worker::run(
        WorkerConfig {
            fleet: FleetConfig::local(prefix.clone()),
            profile: "test".into(),
            name: Some("w1".into()),
            result_ttl_s: 600,
            max_steps: 1 << 22,
        },
        shutdown.clone(),
    ));

    let bad_jobs: [(&str, &str); 4] = [
        ("{", "invalid job JSON"),
        (
            r#"{"schema_version":1,"kind":"matvec","dtype":"i8","a":{"inline":[[1,2]]},"x":{"inline":[1]},"bogus":1}"#,
            "unknown field",
        ),
        (
            r#"{"schema_version":1,"job_id":"bad-shape","kind":"matvec","dtype":"i8","a":{"inline":[[1,2]]},"x":{"inline":[1]}}"#,
            "shape mismatch",
        ),
        (
            r#"{"schema_version":1,"job_id":"bad-path","kind":"matvec","dtype":"i8","a":{"path":"/nonexistent.npy"},"x":{"inline":[1]}}"#,
            "cannot read",
        ),
    ];
    for (job, _) in &bad_jobs {
        client
            .publish(&topology.jobs(), job.as_bytes(), FieldTable::default())
            .await
            .unwrap();
    }
    // A valid job with two column tiles, after the bad ones.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (rows, cols) = (5, 1100);
    let a: Vec<Vec<i64>> = (0..rows)
        .map(|_| (0..cols).map(|_| rng.gen_range(-128..=127)).collect())
        .collect();
    let x: Vec<i64> = (0..cols).map(|_| rng.gen_range(-128..=127)).collect();
    let job = serde_json::json!({
        "schema_version": 1, "job_id": "good", "kind": "matvec", "dtype": "i8",
        "a": {"inline": a}, "x": {"inline": x},
    });
    client
        .publish(
            &topology.jobs(),
            job.to_string().as_bytes(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut failed = Vec::new();
    let good = loop {
        let result: JobResult = serde_json::from_slice(&next(&mut results).await.data).unwrap();
        if result.status == JobStatus::Succeeded {
            break result;
        }
        failed.push(result);
    };
    assert_eq!(
        failed.len(),
        bad_jobs.len(),
        "every bad job got a result first: {failed:?}"
    );
    for (_, expected) in &bad_jobs {
        assert!(
            failed
                .iter()
                .any(|r| r.error.as_deref().unwrap_or("").contains(expected)),
            "no error mentioning {expected:?} in {failed:?}"
        );
    }
    let native = Matrix::new(rows, cols, Dtype::I8, a.concat())
        .unwrap()
        .matvec(&Vector::new(Dtype::I8, x).unwrap())
        .unwrap();
    assert_eq!(good.job_id, "good");
    assert_eq!(good.tiles, 2);
    assert_eq!(good.y.as_ref(), Some(&native));

    // The certificate holds one verifying proof per tile.
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();
    let key = good.certificate_key.clone().unwrap();
    let certificate = store.get(&key).await.unwrap().unwrap();
    assert_eq!(&certificate[..4], b"SSFC");
    let (mut at, mut proofs) = (4, 0);
    while at < certificate.len() {
        let len = u64::from_le_bytes(certificate[at..at + 8].try_into().unwrap()) as usize;
        verify_tile(&certificate[at + 8..at + 8 + len], true).unwrap();
        at += 8 + len;
        proofs += 1;
    }
    assert_eq!(proofs, 2);

    // Each bad job left a dead-lettered copy with its reason.
    let mut dead = client.consume(&topology.dead(), 10, "dead").await.unwrap();
    for _ in 0..bad_jobs.len() {
        let copy = next(&mut dead).await;
        assert!(dead_letter_reason(&copy.properties).is_some());
    }

    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
    store
        .delete(&[key, format!("{prefix}:job:good:result")])
        .await
        .unwrap();
    client.delete_topology().await.unwrap();
}
