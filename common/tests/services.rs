//! The broker and store against the real RabbitMQ and Redis on 127.0.0.1 (as CI starts them).
//! Every test uses its own topology prefix or key and removes what it created.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use starkscale_common::broker::{
    AmqpBroker, Broker, BrokerError, Consumer, Delivery, Headers, Topology, DELIVERY_LIMIT,
};
use starkscale_common::config::{unique_prefix, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::store::{parts, MemoryStore, RedisStore, Store};

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("delivery ok")
}

fn none() -> Headers {
    Headers::new()
}

#[tokio::test]
async fn publish_consume_ack_and_redeclare() {
    let topology = Topology::new(unique_prefix("ack"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    // Every process declares the topology; doing it again must be harmless.
    let again = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();

    broker
        .publish(&topology.tasks(), b"tile 1", &none(), None)
        .await
        .unwrap();
    let mut consumer = again.consume(&topology.tasks(), 1, "t").await.unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.body, b"tile 1");
    assert!(!delivery.redelivered);
    delivery.ack().await.unwrap();

    // A nacked delivery comes back, marked redelivered.
    broker
        .publish(&topology.tasks(), b"tile 2", &none(), None)
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    first.nack(true).await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(second.body, b"tile 2");
    assert!(second.redelivered);
    second.ack().await.unwrap();

    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn unroutable_publish_is_an_error() {
    let topology = Topology::new(unique_prefix("returned"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology)
        .await
        .unwrap();
    let err = broker
        .publish(&unique_prefix("no-such-queue"), b"x", &none(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Returned(_)), "{err}");
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn dead_letter_keeps_the_message_and_its_reason() {
    let topology = Topology::new(unique_prefix("dead"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    broker
        .publish(&topology.jobs(), b"{bad json", &none(), None)
        .await
        .unwrap();
    let mut jobs = broker.consume(&topology.jobs(), 1, "j").await.unwrap();
    let delivery = next(&mut jobs).await;
    broker
        .dead_letter(
            delivery,
            &topology.jobs(),
            "invalid job JSON: expected value",
        )
        .await
        .unwrap();

    let mut dead = broker.consume(&topology.dead(), 1, "d").await.unwrap();
    let copy = next(&mut dead).await;
    assert_eq!(copy.body, b"{bad json");
    assert_eq!(
        copy.dead_letter_reason(),
        Some("invalid job JSON: expected value")
    );
    assert_eq!(
        copy.headers.get("x-starkscale-queue"),
        Some(&topology.jobs())
    );
    copy.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_message_redelivered_past_the_limit_is_dead_lettered() {
    let topology = Topology::new(unique_prefix("limit"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    broker
        .publish(&topology.tasks(), b"poison", &none(), None)
        .await
        .unwrap();
    let mut tasks = broker.consume(&topology.tasks(), 1, "t").await.unwrap();
    for _ in 0..=DELIVERY_LIMIT {
        next(&mut tasks).await.nack(true).await.unwrap();
    }
    // The broker's dead letters go to the expired queue, for the coordinator, naming the queue
    // they came from; the operators' dead queue gets nothing.
    let mut expired = broker.consume(&topology.expired(), 1, "d").await.unwrap();
    let copy = next(&mut expired).await;
    assert_eq!(copy.body, b"poison");
    assert_eq!(copy.dead_letter_source(), Some(topology.tasks().as_str()));
    assert_eq!(copy.dead_letter_reason(), Some("delivery_limit"));
    copy.ack().await.unwrap();
    assert_eq!(broker.depth(&topology.dead()).await.unwrap().0, 0);
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn batches_are_confirmed_and_replies_reach_reply_to() {
    let topology = Topology::new(unique_prefix("batch"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..500).map(|i| format!("task {i}").into_bytes()).collect();
    broker
        .publish_all(&topology.tasks(), &bodies)
        .await
        .unwrap();
    assert_eq!(broker.depth(&topology.tasks()).await.unwrap().0, 500);
    let err = broker
        .publish_all(&unique_prefix("nowhere"), &bodies[..2])
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Returned(_)), "{err}");

    // reply_to set by the publisher reaches the consumer, and results go there too.
    broker
        .publish(&topology.jobs(), b"job", &none(), Some(&topology.dead()))
        .await
        .unwrap();
    let mut jobs = broker.consume(&topology.jobs(), 1, "j").await.unwrap();
    let job = next(&mut jobs).await;
    assert_eq!(job.reply_to.as_deref(), Some(topology.dead().as_str()));
    let mut all = broker.subscribe_results("#").await.unwrap();
    broker
        .publish_result("job-7", job.reply_to.as_deref(), b"result")
        .await
        .unwrap();
    job.ack().await.unwrap();
    assert_eq!(next(&mut all).await.body, b"result");
    let mut replies = broker.consume(&topology.dead(), 1, "r").await.unwrap();
    assert_eq!(next(&mut replies).await.body, b"result");
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn redis_hashes_and_batches_carry_ttls() {
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();
    let key = unique_prefix("hash");
    store
        .put_field(&key, "0", b"tile 0", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .put_field(&key, "1", b"tile 1", Duration::from_secs(60))
        .await
        .unwrap();
    let mut fields = store.fields(&key).await.unwrap();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            ("0".into(), b"tile 0".to_vec()),
            ("1".into(), b"tile 1".to_vec())
        ]
    );
    assert!(store.ttl(&key).await.unwrap().is_some());
    let batch: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("{key}:{i}"), vec![i])).collect();
    store
        .put_all(batch.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    for (k, v) in &batch {
        assert_eq!(store.get(k).await.unwrap().as_ref(), Some(v));
        assert!(store.ttl(k).await.unwrap().is_some(), "{k} has a TTL");
    }
    let mut all: Vec<String> = batch.into_iter().map(|(k, _)| k).collect();
    all.push(key);
    assert_eq!(store.delete(&all).await.unwrap(), 4);
}

#[tokio::test]
async fn redis_writes_expire_and_put_if_absent_is_idempotent() {
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();
    let key = unique_prefix("store");
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(store
        .put_if_absent(&key, b"first", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!store
        .put_if_absent(&key, b"second", Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(
        store.get(&key).await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    let ttl = store.ttl(&key).await.unwrap().expect("every key has a TTL");
    assert!((1..=60).contains(&ttl));

    store
        .put(&key, b"third", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().as_deref(),
        Some(&b"third"[..])
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.get(&key).await.unwrap(), None, "expired");
    assert_eq!(store.delete(&[key]).await.unwrap(), 0);
}

/// A large value written a block at a time and read back by ranges, in both stores alike.
#[tokio::test]
async fn values_are_appended_and_read_by_ranges_with_their_ttl() {
    async fn check<S: Store>(store: S, key: &str) {
        assert_eq!(store.len(key).await.unwrap(), 0);
        assert!(store.get_range(key, 0, 10).await.unwrap().is_empty());
        store
            .append(key, b"header|", Duration::from_secs(60))
            .await
            .unwrap();
        store
            .append(key, b"0123456789", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.len(key).await.unwrap(), 17);
        assert_eq!(store.get_range(key, 7, 4).await.unwrap(), b"0123");
        assert_eq!(store.get_range(key, 15, 10).await.unwrap(), b"89");
        assert!(store.get_range(key, 17, 3).await.unwrap().is_empty());
        assert!(store.get_range(key, 3, 0).await.unwrap().is_empty());
        let ttl = store.ttl(key).await.unwrap().expect("appending sets a TTL");
        assert!((1..=60).contains(&ttl));
        store.delete(&[key.to_string()]).await.unwrap();
    }
    let key = unique_prefix("append");
    check(RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap(), &key).await;
    check(MemoryStore::new(), &key).await;
}

/// A value stored in parts comes back whole from Redis, with no part over the part size and
/// every part carrying the TTL.
#[tokio::test]
async fn a_value_in_parts_round_trips_through_redis() {
    let store = RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap();
    let key = unique_prefix("parts");
    let value: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let manifest = parts::put_parts(&store, &key, &value, 30_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(manifest.parts, 4);
    let mut keys = vec![key.clone()];
    for part in 0..manifest.parts {
        let part_key = parts::part_key(&key, part);
        assert!(store.len(&part_key).await.unwrap() <= 30_000);
        assert!(store.ttl(&part_key).await.unwrap().is_some());
        keys.push(part_key);
    }
    let read = parts::get_parts(&store, &key, 100_000).await.unwrap();
    assert_eq!(read.as_deref(), Some(&value[..]));
    store.delete(&keys).await.unwrap();
}
