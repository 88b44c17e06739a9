//! A worker against the real RabbitMQ and Redis: tasks in, proofs and events out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use rand::{Rng, SeedableRng};
use starkscale_cairo::verify_tile;
use starkscale_cairo::Profile;
use starkscale_common::broker::{AmqpBroker, Broker, Consumer, Delivery, Headers, Topology};
use starkscale_common::config::{unique_prefix, FleetConfig, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::messages::{Keys, TaskEvent, TaskKind, TaskMsg, TaskOutcome, TileInputBlob};
use starkscale_common::store::{RedisStore, Store};
use starkscale_common::{Dtype, Matrix, Vector};
use starkscale_worker::{run, WorkerConfig};
use tokio_util::sync::CancellationToken;

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(120), consumer.next())
        .await
        .expect("a delivery within 120 s")
        .expect("delivery ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_proves_tasks_and_survives_bad_ones() {
    let prefix = unique_prefix("worker");
    let topology = Topology::new(prefix.clone());
    let keys = Keys::new(prefix.clone());
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();

    // A 3x40 tile of a job, stored as the coordinator would.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let a = Matrix::new(
        3,
        40,
        Dtype::I8,
        (0..120).map(|_| rng.gen_range(-128..=127)).collect(),
    )
    .unwrap();
    let x = Vector::new(
        Dtype::I8,
        (0..40).map(|_| rng.gen_range(-128..=127)).collect(),
    )
    .unwrap();
    let job = "job-1";
    let blob = TileInputBlob {
        row0: 0,
        col0: 0,
        a: a.clone(),
        x: x.clone(),
    };
    store
        .put(
            &keys.task_input(job, 0),
            &blob.to_bytes(),
            Duration::from_secs(300),
        )
        .await
        .unwrap();

    let publish = |body: Vec<u8>| {
        let broker = &broker;
        let queue = topology.tasks();
        async move {
            broker
                .publish(&queue, &body, &Headers::new(), None)
                .await
                .unwrap()
        }
    };
    publish(b"{not a task".to_vec()).await;
    let task = TaskMsg {
        job_id: job.into(),
        task: 0,
        kind: TaskKind::Map,
        attempt: 1,
    };
    publish(serde_json::to_vec(&task).unwrap()).await;
    let orphan = TaskMsg {
        job_id: "job-gone".into(),
        task: 0,
        kind: TaskKind::Map,
        attempt: 1,
    };
    publish(serde_json::to_vec(&orphan).unwrap()).await;

    let shutdown = CancellationToken::new();
    let config = WorkerConfig {
        name: Some("w1".into()),
        result_ttl_s: 300,
        ..WorkerConfig::new(FleetConfig::local(prefix.clone()), Profile::Test)
    };
    let worker = tokio::spawn(run(config, shutdown.clone()));

    let mut events = broker
        .consume(&topology.events(), 10, "events")
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut events).await;
        seen.push(serde_json::from_slice::<TaskEvent>(&delivery.body).unwrap());
        delivery.ack().await.unwrap();
    }
    let proven = seen
        .iter()
        .find(|e| e.job_id == job)
        .expect("an event for the job");
    assert_eq!(
        (proven.task, proven.attempt, proven.worker.as_str()),
        (0, 1, "w1")
    );
    assert!(
        matches!(proven.outcome, TaskOutcome::Proven { .. }),
        "{:?}",
        proven.outcome
    );
    let missing = seen
        .iter()
        .find(|e| e.job_id == "job-gone")
        .expect("an event for the orphan");
    assert!(
        matches!(&missing.outcome, TaskOutcome::InputMissing { key } if key.contains("job-gone")),
        "{:?}",
        missing.outcome
    );

    // The stored proof verifies, states the native product and commits to the tile's inputs.
    let proof = store
        .get(&keys.proof(job, 0, 1))
        .await
        .unwrap()
        .expect("proof stored");
    assert!(
        store.ttl(&keys.proof(job, 0, 1)).await.unwrap().is_some(),
        "proof key has a TTL"
    );
    let verified = verify_tile(&proof, true).unwrap();
    assert_eq!(verified.output.y, a.matvec(&x).unwrap());
    verified.check_inputs(Some(&a), Some(&x)).unwrap();

    // The malformed task was rejected, which the broker dead-letters to the expired queue (the
    // coordinator parks it from there with its reason): the worker wrote no queue but events.
    let mut expired = broker
        .consume(&topology.expired(), 10, "expired")
        .await
        .unwrap();
    let copy = next(&mut expired).await;
    assert_eq!(copy.body, b"{not a task");
    assert_eq!(copy.dead_letter_reason(), Some("rejected"));
    assert_eq!(copy.dead_letter_source(), Some(topology.tasks().as_str()));
    copy.ack().await.unwrap();

    // Shutdown drains and returns cleanly.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    store
        .delete(&[keys.task_input(job, 0), keys.proof(job, 0, 1)])
        .await
        .unwrap();
    broker.delete_topology().await.unwrap();
}
