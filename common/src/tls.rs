//! TLS to RabbitMQ and Redis (rustls): which CA signs the services' certificates and which
//! client certificate this process presents. The URL's scheme turns TLS on (`amqps://`,
//! `rediss://`); these options only say whom to trust and who we are.
//!
//! The files are read each time a process connects ([`TlsOptions::load`]), so a certificate
//! renewed on disk (a rotated Kubernetes Secret) is used from the next reconnect on. They are
//! checked as they are read: a CA file without a certificate, a key that does not parse or a
//! certificate without its key is a clear error, not a handshake failure later.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the TLS material is; flattened into [`crate::config::FleetConfig`].
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) that sign the services' certificates, for `amqps://`
    /// and `rediss://` URLs. Redis then trusts only these; RabbitMQ trusts them besides the
    /// system's roots. Without it both use the system's roots.
    #[arg(long, env = "STARKSCALE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) this process presents to the services, for mutual TLS.
    #[arg(
        long,
        env = "STARKSCALE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(
        long,
        env = "STARKSCALE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// TLS material that failed to load; says which file and why, never what a key holds.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS {what} {path} is not usable: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-cert and --tls-key go together; only one is given")]
    Unpaired,
    #[error("TLS options are given but neither URL uses TLS (amqps://, rediss://)")]
    Unused,
}

/// Loaded, checked TLS material: PEM bytes as the connectors take them.
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM CA certificates, if configured.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate chain and key, if configured.
    pub identity: Option<Identity>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Never prints the key.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// Never prints key material; says what is configured.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Tls {
    /// Whether nothing is configured (TLS, if the URL asks for it, uses the system's roots).
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }
}

impl TlsOptions {
    /// Reads and checks the files. `urls` are the URLs the material is for: options that no
    /// TLS URL would use are an error, since they suggest a link believed encrypted that is not.
    pub fn load(&self, urls: &[&str]) -> Result<Tls, TlsError> {
        let configured = self.tls_ca.is_some() || self.tls_cert.is_some();
        if configured && !urls.iter().any(|url| uses_tls(url)) {
            return Err(TlsError::Unused);
        }
        let ca = match &self.tls_ca {
            None => None,
            Some(path) => {
                let pem = read("CA file", path)?;
                certificates("CA file", path, &pem)?;
                Some(pem)
            }
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert_path), Some(key_path)) => {
                let cert = read("client certificate", cert_path)?;
                certificates("client certificate", cert_path, &cert)?;
                let key = read("client key", key_path)?;
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Invalid {
                    what: "client key",
                    path: key_path.clone(),
                    reason: format!("no PEM private key ({e})"),
                })?;
                Some(Identity { cert, key })
            }
            _ => return Err(TlsError::Unpaired),
        };
        Ok(Tls { ca, identity })
    }
}

/// Whether `url` asks for TLS.
pub fn uses_tls(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("amqps") || scheme.eq_ignore_ascii_case("rediss")
}

/// Bounded: certificate and key files are kilobytes; anything larger is not one.
const MAX_PEM_BYTES: u64 = 1 << 20;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            what,
            path: path.to_owned(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// Checks that `pem` holds at least one certificate and nothing malformed.
fn certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        what,
        path: path.to_owned(),
        reason,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| invalid(format!("malformed PEM ({e})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsOptions {
        TlsOptions {
            tls_ca: ca.map(Path::to_owned),
            tls_cert: cert.map(Path::to_owned),
            tls_key: key.map(Path::to_owned),
        }
    }

    #[test]
    fn bad_material_is_refused_by_name_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let tls_url = ["amqps://h/%2f", "redis://h/"];

        let empty = options(None, None, None).load(&["amqp://h/", "redis://h/"]);
        assert!(empty.is_ok_and(|tls| tls.is_empty()));

        let unused = options(Some(&junk), None, None).load(&["amqp://h/", "redis://h/"]);
        assert!(matches!(unused, Err(TlsError::Unused)), "{unused:?}");

        let no_cert = options(Some(&junk), None, None).load(&tls_url);
        let message = no_cert.map(drop).unwrap_err().to_string();
        assert!(
            message.contains("CA file") && message.contains("no PEM certificate"),
            "{message}"
        );

        let absent = options(Some(&missing), None, None).load(&tls_url);
        assert!(matches!(absent, Err(TlsError::Read { .. })), "{absent:?}");

        let unpaired = options(None, Some(&junk), None).load(&tls_url);
        assert!(matches!(unpaired, Err(TlsError::Unpaired)), "{unpaired:?}");
    }

    #[test]
    fn only_tls_schemes_count_as_tls() {
        assert!(uses_tls("amqps://u:p@h:5671/%2f"));
        assert!(uses_tls("REDISS://h:6380/"));
        assert!(!uses_tls("amqp://h/"));
        assert!(!uses_tls("redis://h/"));
        assert!(!uses_tls("h:6379"));
    }
}
