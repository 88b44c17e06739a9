//! Least privilege on the real services: `starkscale access files` makes the accounts, Redis and
//! RabbitMQ load them, and then the services themselves refuse each role everything but its own
//! part — and a fleet of those accounts (coordinator, worker and client processes) proves a job.
//!
//! The accounts are named after the test's own prefix and removed at the end; the shared
//! services' default user and guest account are left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use starkscale_common::broker::{AmqpBroker, Broker, BrokerError, Headers, Topology};
use starkscale_common::config::unique_prefix;
use starkscale_common::messages::Keys;
use starkscale_common::store::{RedisStore, Store, StoreError};
use support::{clean_up, prove_inline_job, starkscale_with};

const TTL: Duration = Duration::from_secs(300);

/// Removes the test's accounts from both services however the test ends.
struct Accounts {
    users: Vec<String>,
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("redis-cli")
                .args(["ACL", "DELUSER", user])
                .output();
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", user])
                .output();
        }
    }
}

/// Loads the files `access files` wrote into the shared services: every Redis ACL line but the
/// default user's (which would lock out the other tests), and the RabbitMQ definitions.
fn install(dir: &Path) -> Vec<String> {
    let acl = std::fs::read_to_string(dir.join("users.acl")).unwrap();
    let mut users = Vec::new();
    for line in acl.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "user", "{line}");
        if words[1] == "default" {
            assert_eq!(words[2], "off", "a deployment's default user is off");
            continue;
        }
        assert!(!line.contains('>'), "no plain password in {line}");
        let out = Command::new("redis-cli")
            .args(["ACL", "SETUSER"])
            .args(&words[1..])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "OK",
            "ACL SETUSER {line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        users.push(words[1].to_string());
    }
    let out = Command::new("rabbitmqctl")
        .args(["-q", "import_definitions"])
        .arg(dir.join("definitions.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import_definitions: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    users
}

fn assert_noperm<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(e) => assert!(
            e.message.contains("NOPERM") && !e.unavailable,
            "{what}: refused for the wrong reason: {e}"
        ),
        Ok(v) => panic!("{what}: Redis allowed it ({v:?})"),
    }
}

/// Runs `op` on a fresh connection (a refusal closes the channel it happens on) and expects
/// RabbitMQ to refuse it.
async fn assert_refused<F, Fut, T>(what: &str, url: &str, topology: &Topology, op: F)
where
    F: FnOnce(AmqpBroker) -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let broker = AmqpBroker::join(url, topology.clone()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), op(broker.clone()))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"));
    match outcome {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("ACCESS_REFUSED") || e.contains("ACCESS-REFUSED"),
                "{what}: failed for another reason: {e}"
            );
        }
        Ok(_) => panic!("{what}: RabbitMQ allowed it"),
    }
    broker.close().await;
}

#[test]
fn each_role_may_do_only_its_part_and_a_fleet_of_such_accounts_proves_a_job() {
    let prefix = unique_prefix("access");
    let password = || {
        use rand::Rng as _;
        let bytes: [u8; 16] = rand::thread_rng().gen();
        hex::encode(bytes)
    };
    let env = [
        ("STARKSCALE_ADMIN_PASSWORD", password()),
        ("STARKSCALE_COORDINATOR_PASSWORD", password()),
        ("STARKSCALE_WORKER_PASSWORD", password()),
        ("STARKSCALE_CLIENT_PASSWORD", password()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = starkscale_with(
        &["access", "files", "--out", dir.path().to_str().unwrap()],
        &prefix,
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _accounts = Accounts {
        users: install(dir.path()),
    };
    let urls = |role: &str, env_index: usize| {
        let user = format!("{prefix}-{role}");
        let pw = &env[env_index].1;
        (
            format!("amqp://{user}:{pw}@127.0.0.1:5672/%2f"),
            format!("redis://{user}:{pw}@127.0.0.1:6379/"),
        )
    };
    let (coordinator_amqp, coordinator_redis) = urls("coordinator", 1);
    let (worker_amqp, worker_redis) = urls("worker", 2);
    let (client_amqp, client_redis) = urls("client", 3);

    let topology = Topology::new(prefix.clone());
    let keys = Keys::new(prefix.clone());
    let job = "access-job";
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // The coordinator declares the topology and may write any of the job's state.
        let owner = AmqpBroker::connect(&coordinator_amqp, topology.clone())
            .await
            .unwrap();
        let state = RedisStore::connect(&coordinator_redis).await.unwrap();
        for key in [keys.task_input(job, 0), keys.result(job), keys.plan(job)] {
            state.put(&key, b"coordinator's", TTL).await.unwrap();
        }

        // A worker reads task inputs and writes proofs...
        let worker = RedisStore::connect(&worker_redis).await.unwrap();
        assert_eq!(
            worker.get(&keys.task_input(job, 0)).await.unwrap().unwrap(),
            b"coordinator's"
        );
        worker
            .put(&keys.proof(job, 0, 1), b"proof", TTL)
            .await
            .unwrap();
        // ...and nothing else: no result, plan, progress or task record; not the inputs; no
        // reads of anything but inputs; no deletes; not the coordinator's lease.
        for key in [
            keys.result(job),
            keys.plan(job),
            keys.progress(job),
            keys.request(job),
            keys.certificate(job),
            keys.y(job),
            keys.task_input(job, 0),
            keys.model("00"),
            keys.upload("00"),
            format!("{prefix}-other:job:{job}:task:0:proof:1"),
        ] {
            assert_noperm(
                &format!("worker SET {key}"),
                worker.put(&key, b"x", TTL).await,
            );
        }
        assert_noperm(
            "worker HSET tasks",
            worker.put_field(&keys.tasks(job), "0", b"{}", TTL).await,
        );
        assert_noperm("worker GET result", worker.get(&keys.result(job)).await);
        assert_noperm("worker GET proof", worker.get(&keys.proof(job, 0, 1)).await);
        assert_noperm(
            "worker DEL proof",
            worker.delete(&[keys.proof(job, 0, 1)]).await,
        );
        assert_noperm(
            "worker takes the lease",
            worker.lease(&keys.coordinator_lease(), "w", TTL).await,
        );

        // A client uploads inputs and models and reads results; it writes no job state and
        // reads no task input or proof.
        let client = RedisStore::connect(&client_redis).await.unwrap();
        assert_eq!(
            client.get(&keys.result(job)).await.unwrap().unwrap(),
            b"coordinator's"
        );
        client.put(&keys.upload("ab"), b"x", TTL).await.unwrap();
        client.put(&keys.model("ab"), b"m", TTL).await.unwrap();
        for key in [keys.result(job), keys.progress(job), keys.proof(job, 0, 1)] {
            assert_noperm(
                &format!("client SET {key}"),
                client.put(&key, b"x", TTL).await,
            );
        }
        assert_noperm(
            "client GET input",
            client.get(&keys.task_input(job, 0)).await,
        );
        assert_noperm("client GET proof", client.get(&keys.proof(job, 0, 1)).await);

        // RabbitMQ: a worker consumes tasks and reports events through its exchange.
        let worker_broker = AmqpBroker::join(&worker_amqp, topology.clone())
            .await
            .unwrap();
        let _tasks = worker_broker
            .consume(&topology.tasks(), 1, "worker")
            .await
            .unwrap();
        worker_broker
            .publish(&topology.events(), b"event", &Headers::new(), None)
            .await
            .unwrap();
        let (events, _) = owner.depth(&topology.events()).await.unwrap();
        assert_eq!(events, 1, "the worker's event reached the events queue");
        worker_broker.close().await;
        let w = &worker_amqp;
        assert_refused("worker submits a job", w, &topology, |b| async move {
            b.publish(&b.topology().jobs(), b"{}", &Headers::new(), None)
                .await
        })
        .await;
        assert_refused("worker publishes a result", w, &topology, |b| async move {
            b.publish_result(job, None, b"{}").await
        })
        .await;
        assert_refused("worker publishes a task", w, &topology, |b| async move {
            b.publish(&b.topology().tasks(), b"{}", &Headers::new(), None)
                .await
        })
        .await;
        assert_refused(
            "worker writes a dead letter",
            w,
            &topology,
            |b| async move {
                b.publish(&b.topology().dead(), b"{}", &Headers::new(), None)
                    .await
            },
        )
        .await;
        assert_refused("worker consumes jobs", w, &topology, |b| async move {
            b.consume(&b.topology().jobs(), 1, "x").await.map(drop)
        })
        .await;
        assert_refused("worker consumes events", w, &topology, |b| async move {
            b.consume(&b.topology().events(), 1, "x").await.map(drop)
        })
        .await;
        assert_refused("worker listens to results", w, &topology, |b| async move {
            b.subscribe_results("#").await.map(drop)
        })
        .await;

        // A client submits jobs and hears results; it reports no events and takes no tasks.
        let client_broker = AmqpBroker::join(&client_amqp, topology.clone())
            .await
            .unwrap();
        let _results = client_broker.subscribe_results("#").await.unwrap();
        client_broker
            .publish(&topology.jobs(), b"{}", &Headers::new(), None)
            .await
            .unwrap();
        client_broker.close().await;
        let c = &client_amqp;
        assert_refused("client reports an event", c, &topology, |b| async move {
            b.publish(&b.topology().events(), b"{}", &Headers::new(), None)
                .await
        })
        .await;
        assert_refused("client consumes tasks", c, &topology, |b| async move {
            b.consume(&b.topology().tasks(), 1, "x").await.map(drop)
        })
        .await;
        assert_refused("client consumes jobs", c, &topology, |b| async move {
            b.consume(&b.topology().jobs(), 1, "x").await.map(drop)
        })
        .await;
        assert_refused("client publishes a result", c, &topology, |b| async move {
            b.publish_result(job, None, b"{}").await
        })
        .await;
        assert_refused(
            "client reads the results log",
            c,
            &topology,
            |b| async move {
                b.consume(&b.topology().results_log(), 1, "x")
                    .await
                    .map(drop)
            },
        )
        .await;

        // The fleet below starts on this topology (its coordinator dead-letters the two test
        // messages above as malformed).
        owner.close().await;
        let mut stale = keys.working_set(job, 1, 1);
        stale.extend([keys.result(job), keys.upload("ab"), keys.model("ab")]);
        state.delete(&stale).await.unwrap();
    });

    // A whole fleet of these accounts: coordinator, worker and client processes prove a job.
    let service_env = |amqp: &str, redis: &str| {
        vec![
            ("STARKSCALE_AMQP_URL", amqp.to_string()),
            ("STARKSCALE_REDIS_URL", redis.to_string()),
        ]
    };
    prove_inline_job(
        &prefix,
        &service_env(&coordinator_amqp, &coordinator_redis),
        &service_env(&worker_amqp, &worker_redis),
        &service_env(&client_amqp, &client_redis),
    );
    clean_up(&prefix, &["example-inline"]);
}
