//! The broker and store against the real RabbitMQ and Redis on 127.0.0.1 (as CI starts them).
//! Every test uses its own topology prefix or key and removes what it created.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use starkscale_common::broker::{
    dead_letter_reason, AmqpBroker, BrokerError, Topology, DELIVERY_LIMIT,
};
use starkscale_common::config::{unique_prefix, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::store::RedisStore;

async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer open")
        .expect("delivery ok")
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..Default::default()
    }
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
        .publish(&topology.tasks(), b"tile 1", FieldTable::default())
        .await
        .unwrap();
    let mut consumer = again.consume(&topology.tasks(), 1, "t").await.unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.data, b"tile 1");
    assert!(!delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    // A nacked delivery comes back, marked redelivered.
    broker
        .publish(&topology.tasks(), b"tile 2", FieldTable::default())
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    first.nack(requeue()).await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(second.data, b"tile 2");
    assert!(second.redelivered);
    second.ack(BasicAckOptions::default()).await.unwrap();

    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn unroutable_publish_is_an_error() {
    let topology = Topology::new(unique_prefix("returned"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology)
        .await
        .unwrap();
    let err = broker
        .publish(&unique_prefix("no-such-queue"), b"x", FieldTable::default())
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
        .publish(&topology.jobs(), b"{bad json", FieldTable::default())
        .await
        .unwrap();
    let mut jobs = broker.consume(&topology.jobs(), 1, "j").await.unwrap();
    let delivery = next(&mut jobs).await;
    broker
        .dead_letter(&delivery, "invalid job JSON: expected value")
        .await
        .unwrap();

    let mut dead = broker.consume(&topology.dead(), 1, "d").await.unwrap();
    let copy = next(&mut dead).await;
    assert_eq!(copy.data, b"{bad json");
    assert_eq!(
        dead_letter_reason(&copy.properties).as_deref(),
        Some("invalid job JSON: expected value")
    );
    copy.ack(BasicAckOptions::default()).await.unwrap();
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_message_redelivered_past_the_limit_is_dead_lettered() {
    let topology = Topology::new(unique_prefix("limit"));
    let broker = AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
        .await
        .unwrap();
    broker
        .publish(&topology.tasks(), b"poison", FieldTable::default())
        .await
        .unwrap();
    let mut tasks = broker.consume(&topology.tasks(), 1, "t").await.unwrap();
    for _ in 0..=DELIVERY_LIMIT {
        next(&mut tasks).await.nack(requeue()).await.unwrap();
    }
    let mut dead = broker.consume(&topology.dead(), 1, "d").await.unwrap();
    let copy = next(&mut dead).await;
    assert_eq!(copy.data, b"poison");
    copy.ack(BasicAckOptions::default()).await.unwrap();
    broker.delete_topology().await.unwrap();
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
