//! [`Broker`] inside one process: the embedded mode's queues.
//!
//! Each queue is a deque behind a mutex with a [`Notify`] for waiting consumers. A consumer's
//! prefetch is a semaphore: a delivery holds one permit until it is settled. Settling follows
//! RabbitMQ: ack forgets, nack with requeue (or dropping the delivery unsettled) puts the message
//! back at the head, nack without requeue and the [`DELIVERY_LIMIT`] dead-letter it. Nothing is
//! persistent: the embedded mode lives and dies with its process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    AckFuture, Acker, Broker, BrokerError, Consumer, Delivery, Headers, Topology, DELIVERY_LIMIT,
    REASON_HEADER, SOURCE_QUEUE_HEADER,
};

#[derive(Clone)]
struct Message {
    body: Vec<u8>,
    headers: Headers,
    reply_to: Option<String>,
    deliveries: u32,
}

struct Queue {
    name: String,
    messages: Mutex<VecDeque<Message>>,
    notify: Notify,
    /// Work queues dead-letter to the expired queue after [`DELIVERY_LIMIT`] deliveries; the
    /// other queues keep all.
    dead: Option<Arc<Queue>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a deque half-updated, so poison is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    fn new(name: String, dead: Option<Arc<Queue>>) -> Arc<Queue> {
        Arc::new(Queue {
            name,
            messages: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            dead,
        })
    }

    fn push(&self, message: Message, front: bool) {
        let mut messages = lock(&self.messages);
        if front {
            messages.push_front(message);
        } else {
            messages.push_back(message);
        }
        drop(messages);
        self.notify.notify_waiters();
    }

    fn dead_letter(&self, mut message: Message, reason: &str) {
        if let Some(dead) = &self.dead {
            message
                .headers
                .insert(REASON_HEADER.into(), reason.to_string());
            message
                .headers
                .insert(SOURCE_QUEUE_HEADER.into(), self.name.clone());
            message.deliveries = 0;
            dead.push(message, false);
        }
    }

    fn pop(&self) -> Option<Message> {
        let mut message = lock(&self.messages).pop_front()?;
        message.deliveries += 1;
        Some(message)
    }

    /// Back to the head of the queue, unless it has used up its deliveries.
    fn requeue(&self, message: Message) {
        if self.dead.is_some() && message.deliveries >= DELIVERY_LIMIT {
            self.dead_letter(message, "delivery limit exceeded");
        } else {
            self.push(message, true);
        }
    }

    async fn next(self: &Arc<Self>) -> Message {
        loop {
            // Register interest before looking, so a push in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(message) = self.pop() {
                return message;
            }
            notified.await;
        }
    }
}

/// An unsettled delivery. Dropped unsettled, its message goes back to the queue.
struct MemoryAcker {
    queue: Arc<Queue>,
    message: Option<Message>,
    _permit: OwnedSemaphorePermit,
}

impl Acker for MemoryAcker {
    fn ack(mut self: Box<Self>) -> AckFuture {
        self.message = None;
        Box::pin(async { Ok(()) })
    }
    fn nack(mut self: Box<Self>, requeue: bool) -> AckFuture {
        if let Some(message) = self.message.take() {
            if requeue {
                self.queue.requeue(message);
            } else {
                self.queue.dead_letter(message, "rejected");
            }
        }
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.queue.requeue(message);
        }
    }
}

struct Subscriber {
    pattern: String,
    sender: mpsc::UnboundedSender<Vec<u8>>,
}

struct Inner {
    queues: HashMap<String, Arc<Queue>>,
    subscribers: Mutex<Vec<Subscriber>>,
}

/// In-process queues with the fleet's topology. Clones share the queues.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
    topology: Topology,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(topology: Topology) -> MemoryBroker {
        let expired = Queue::new(topology.expired(), None);
        let mut queues: HashMap<String, Arc<Queue>> = topology
            .work_queues()
            .into_iter()
            .map(|name| (name.clone(), Queue::new(name, Some(expired.clone()))))
            .collect();
        queues.insert(topology.expired(), expired);
        queues.insert(topology.dead(), Queue::new(topology.dead(), None));
        MemoryBroker {
            inner: Arc::new(Inner {
                queues,
                subscribers: Mutex::new(Vec::new()),
            }),
            topology,
        }
    }

    fn queue(&self, name: &str) -> Result<&Arc<Queue>, BrokerError> {
        self.inner
            .queues
            .get(name)
            .ok_or_else(|| BrokerError::Returned(name.to_string()))
    }

    /// Messages waiting in `queue`.
    pub fn ready(&self, queue: &str) -> usize {
        self.inner
            .queues
            .get(queue)
            .map_or(0, |q| lock(&q.messages).len())
    }
}

impl Broker for MemoryBroker {
    fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: &Headers,
        reply_to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let message = Message {
            body: body.to_vec(),
            headers: headers.clone(),
            reply_to: reply_to.map(str::to_string),
            deliveries: 0,
        };
        self.queue(queue)?.push(message, false);
        Ok(())
    }

    async fn publish_all(&self, queue: &str, bodies: &[Vec<u8>]) -> Result<(), BrokerError> {
        let queue = self.queue(queue)?;
        let mut messages = lock(&queue.messages);
        messages.extend(bodies.iter().map(|body| Message {
            body: body.clone(),
            headers: Headers::new(),
            reply_to: None,
            deliveries: 0,
        }));
        drop(messages);
        queue.notify.notify_waiters();
        Ok(())
    }

    async fn publish_result(
        &self,
        job_id: &str,
        reply_to: Option<&str>,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        lock(&self.inner.subscribers).retain(|s| {
            if s.pattern == "#" || s.pattern == job_id {
                // A subscriber that went away is dropped from the list.
                s.sender.send(body.to_vec()).is_ok()
            } else {
                !s.sender.is_closed()
            }
        });
        if let Some(queue) = reply_to {
            self.publish(queue, body, &Headers::new(), None).await?;
        }
        Ok(())
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        _tag: &str,
    ) -> Result<Consumer, BrokerError> {
        let queue = self.queue(queue)?.clone();
        let permits = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        let name = queue.name.clone();
        let stream = futures_util::stream::unfold((queue, permits), |(queue, permits)| async {
            let permit = permits.clone().acquire_owned().await.ok()?;
            let message = queue.next().await;
            let delivery = Delivery {
                body: message.body.clone(),
                headers: message.headers.clone(),
                reply_to: message.reply_to.clone(),
                redelivered: message.deliveries > 1,
                acker: Box::new(MemoryAcker {
                    queue: queue.clone(),
                    message: Some(message),
                    _permit: permit,
                }),
            };
            Some((Ok(delivery), (queue, permits)))
        });
        Ok(Consumer {
            queue: name,
            stream: Box::pin(stream),
        })
    }

    async fn subscribe_results(&self, pattern: &str) -> Result<Consumer, BrokerError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers).push(Subscriber {
            pattern: pattern.to_string(),
            sender,
        });
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async {
            let body = receiver.recv().await?;
            let delivery = Delivery {
                body,
                headers: Headers::new(),
                reply_to: None,
                redelivered: false,
                acker: Box::new(SettledAcker),
            };
            Some((Ok(delivery), receiver))
        });
        Ok(Consumer {
            queue: self.topology.results(),
            stream: Box::pin(stream),
        })
    }
}

/// Results are fanned out without acknowledgement, like an auto-ack AMQP subscription.
struct SettledAcker;

impl Acker for SettledAcker {
    fn ack(self: Box<Self>) -> AckFuture {
        Box::pin(async { Ok(()) })
    }
    fn nack(self: Box<Self>, _requeue: bool) -> AckFuture {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> MemoryBroker {
        MemoryBroker::new(Topology::new("t"))
    }

    #[tokio::test]
    async fn prefetch_bounds_unsettled_deliveries_and_requeue_redelivers() {
        let b = broker();
        let q = b.topology().tasks();
        b.publish_all(&q, &[b"1".to_vec(), b"2".to_vec()])
            .await
            .unwrap();
        let mut c = b.consume(&q, 1, "c").await.unwrap();
        let first = c.next().await.unwrap();
        assert_eq!(first.body, b"1");
        // The second message waits for the first to be settled.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), c.next()).await;
        assert!(pending.is_err(), "prefetch 1 allowed a second delivery");
        first.nack(true).await.unwrap();
        let again = c.next().await.unwrap();
        assert_eq!(
            (again.body.as_slice(), again.redelivered),
            (&b"1"[..], true)
        );
        drop(again); // unsettled: back to the queue
        let third = c.next().await.unwrap();
        assert_eq!(third.body, b"1");
        third.ack().await.unwrap();
        assert_eq!(c.next().await.unwrap().body, b"2");
    }

    #[tokio::test]
    async fn poison_messages_are_dead_lettered_after_the_delivery_limit() {
        let b = broker();
        let q = b.topology().tasks();
        b.publish(&q, b"poison", &Headers::new(), None)
            .await
            .unwrap();
        let mut c = b.consume(&q, 1, "c").await.unwrap();
        for _ in 0..DELIVERY_LIMIT {
            c.next().await.unwrap().nack(true).await.unwrap();
        }
        let mut expired = b.consume(&b.topology().expired(), 1, "d").await.unwrap();
        let copy = expired.next().await.unwrap();
        assert_eq!(copy.body, b"poison");
        assert_eq!(copy.dead_letter_reason(), Some("delivery limit exceeded"));
        assert_eq!(copy.dead_letter_source(), Some(q.as_str()));
        assert_eq!(b.ready(&q), 0);
    }

    #[tokio::test]
    async fn unknown_queues_are_unroutable_and_results_reach_matching_subscribers() {
        let b = broker();
        let err = b.publish("nowhere", b"x", &Headers::new(), None).await;
        assert!(matches!(err, Err(BrokerError::Returned(_))));
        let mut mine = b.subscribe_results("job-1").await.unwrap();
        let mut all = b.subscribe_results("#").await.unwrap();
        b.publish_result("job-2", None, b"two").await.unwrap();
        b.publish_result("job-1", None, b"one").await.unwrap();
        assert_eq!(mine.next().await.unwrap().body, b"one");
        assert_eq!(all.next().await.unwrap().body, b"two");
        assert_eq!(all.next().await.unwrap().body, b"one");
    }
}
