//! TLS on the real services: a Redis with a TLS port and a RabbitMQ node with a TLS listener, of
//! the test's own, both requiring client certificates from a CA the test generates. A fleet of
//! coordinator, worker and client processes proves a job through them (`rediss://`,
//! `amqps://`), and each way of connecting without the right material is refused: a server
//! certificate the process does not trust, no client certificate, and a client certificate from
//! another CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use starkscale_common::broker::{AmqpBroker, Topology};
use starkscale_common::config::unique_prefix;
use starkscale_common::store::{RedisStore, Store};
use starkscale_common::tls::{Tls, TlsOptions};
use support::faults::{SpareRabbit, SpareRedis, TlsListener};
use support::{prove_inline_job, starkscale_with};

/// A CA and what it signs, as PEM files in a directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA named `name` in `dir`; it signs a server certificate for 127.0.0.1 and localhost and a
/// client certificate.
fn pki(dir: &Path, name: &str) -> Pki {
    let write = |file: &str, pem: String| {
        let path = dir.join(format!("{name}-{file}.pem"));
        std::fs::write(&path, pem).unwrap();
        path
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, common_name: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "starkscale services",
    );
    let (client_cert, client_key) = leaf(Vec::new(), "starkscale-worker");
    Pki {
        ca: write("ca", ca_cert.pem()),
        server_cert: write("server-cert", server_cert),
        server_key: write("server-key", server_key),
        client_cert: write("client-cert", client_cert),
        client_key: write("client-key", client_key),
    }
}

impl Pki {
    fn options(&self) -> TlsOptions {
        TlsOptions {
            tls_ca: Some(self.ca.clone()),
            tls_cert: Some(self.client_cert.clone()),
            tls_key: Some(self.client_key.clone()),
        }
    }

    fn env(&self, amqp: &str, redis: &str) -> Vec<(&'static str, String)> {
        vec![
            ("STARKSCALE_AMQP_URL", amqp.to_string()),
            ("STARKSCALE_REDIS_URL", redis.to_string()),
            ("STARKSCALE_TLS_CA", self.ca.display().to_string()),
            (
                "STARKSCALE_TLS_CERT",
                self.client_cert.display().to_string(),
            ),
            ("STARKSCALE_TLS_KEY", self.client_key.display().to_string()),
        ]
    }
}

/// Whether Redis refuses this material: at the handshake, or (TLS 1.3 checks the client's
/// certificate after the client's side of the handshake) at the first command.
async fn redis_refuses(url: &str, tls: &Tls) -> Result<(), String> {
    match RedisStore::connect_with(url, tls).await {
        Err(_) => Ok(()),
        Ok(store) => match store.get("tls-probe").await {
            Err(_) => Ok(()),
            Ok(_) => Err(format!("Redis accepted {tls:?}")),
        },
    }
}

/// Whether RabbitMQ refuses this material (connecting declares the topology, a round trip).
async fn rabbit_refuses(url: &str, tls: &Tls, prefix: &str) -> Result<(), String> {
    match AmqpBroker::connect_with(url, Topology::new(prefix), tls).await {
        Err(_) => Ok(()),
        Ok(broker) => {
            broker.close().await;
            Err(format!("RabbitMQ accepted {tls:?}"))
        }
    }
}

#[test]
fn a_fleet_proves_a_job_over_tls_and_wrong_material_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(dir.path(), "fleet");
    let rogue = pki(dir.path(), "rogue");
    let listener = || TlsListener::new(&ours.server_cert, &ours.server_key, &ours.ca);
    let redis = SpareRedis::start_tls(listener());
    let rabbit = SpareRabbit::start_tls(listener());
    let (redis_url, amqp_url) = (redis.tls_url(), rabbit.tls_url());
    let prefix = unique_prefix("tls");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let urls = [amqp_url.as_str(), redis_url.as_str()];
        let good = ours.options().load(&urls).unwrap();

        // The right CA and a client certificate it signed: both services serve.
        let store = RedisStore::connect_with(&redis_url, &good).await.unwrap();
        assert_eq!(store.get("tls-probe").await.unwrap(), None);
        let broker = AmqpBroker::connect_with(&amqp_url, Topology::new(&*prefix), &good)
            .await
            .unwrap();
        broker.close().await;

        let untrusted = Tls {
            ca: None,
            ..good.clone()
        };
        let anonymous = Tls {
            identity: None,
            ..good.clone()
        };
        let foreign = Tls {
            identity: rogue.options().load(&urls).unwrap().identity,
            ..good.clone()
        };
        let wrong_ca = Tls {
            ca: rogue.options().load(&urls).unwrap().ca,
            ..good.clone()
        };
        for (case, tls) in [
            ("a server certificate signed by an unknown CA", &untrusted),
            ("a server certificate signed by another CA", &wrong_ca),
            ("no client certificate", &anonymous),
            ("a client certificate of another CA", &foreign),
        ] {
            redis_refuses(&redis_url, tls)
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            rabbit_refuses(&amqp_url, tls, &prefix)
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
        }
        // Plain AMQP and Redis protocol on the TLS ports get nowhere either.
        let plain_amqp = amqp_url.replacen("amqps://", "amqp://", 1);
        rabbit_refuses(&plain_amqp, &Tls::default(), &prefix)
            .await
            .unwrap();
        let plain_redis = redis_url.replacen("rediss://", "redis://", 1);
        redis_refuses(&plain_redis, &Tls::default()).await.unwrap();
    });

    // Coordinator, worker and client processes, all over TLS with client certificates.
    let env = ours.env(&amqp_url, &redis_url);
    prove_inline_job(&prefix, &env, &env, &env);

    // A client that does not name the CA is told why it cannot connect.
    let without_ca: Vec<_> = env
        .iter()
        .filter(|(key, _)| *key != "STARKSCALE_TLS_CA")
        .cloned()
        .collect();
    let out = starkscale_with(&["status", "example-inline"], &prefix, &without_ca);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success() && stderr.contains("certificate"),
        "{stderr}"
    );
    // A CA file that holds no certificate stops a service at start, naming the file.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let mut bad_ca = env.clone();
    bad_ca.retain(|(key, _)| *key != "STARKSCALE_TLS_CA");
    bad_ca.push(("STARKSCALE_TLS_CA", junk.display().to_string()));
    let out = starkscale_with(&["worker", "--profile", "test"], &prefix, &bad_ca);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("CA file") && stderr.contains("junk.pem"),
        "{stderr}"
    );
    // The services are the test's own; they go when dropped, with everything on them.
}
