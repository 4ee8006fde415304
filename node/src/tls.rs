//! Mutual TLS: development certificates (rcgen), loading PEM files into
//! tonic's rustls configuration, and authorizing a caller by the DNS name in
//! its client certificate. Used by the node and by the coordinator.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::NodeError;

/// A certificate, its key and the CA to trust, as PEM text.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Leaf certificate chain.
    pub cert_pem: String,
    /// Leaf private key.
    pub key_pem: String,
    /// CA certificate to trust for peers.
    pub ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial(<pem>)")
    }
}

impl TlsMaterial {
    /// Reads the three PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, NodeError> {
        let read = |p: &Path| fs::read_to_string(p).map_err(|e| NodeError::io(p, e));
        Ok(TlsMaterial {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: read(ca)?,
        })
    }

    /// Reads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`, the layout
    /// written by [`write_dev_certs`].
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, NodeError> {
        Self::load(
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
            &dir.join("ca.pem"),
        )
    }

    /// Server side: present our certificate, require a client certificate
    /// signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        install_crypto_provider();
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side: present our certificate and expect the server to hold a
    /// certificate for `server_name`, signed by the CA.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        install_crypto_provider();
        ClientTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(server_name)
    }
}

/// Makes ring rustls's crypto provider for the process (once; a provider
/// installed before is kept). Every TLS setup calls it first: the build has
/// both ring (ours, through tonic) and aws-lc-rs (through delta-rs), and with
/// two, rustls will not choose one itself.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Returns the first of `allowed` that the (already chain-verified) peer
/// certificate is valid for, if any.
pub fn authorized_name<'a>(peer: &CertificateDer<'_>, allowed: &'a [String]) -> Option<&'a str> {
    let cert = webpki::EndEntityCert::try_from(peer).ok()?;
    allowed.iter().map(String::as_str).find(|name| {
        ServerName::try_from(*name)
            .map(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok())
            .unwrap_or(false)
    })
}

/// The subject and usages of the development CA (one definition, so a CA
/// loaded from its key issues certificates that chain to the written one).
fn dev_ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cleanroom development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

fn tls_err(e: rcgen::Error) -> NodeError {
    NodeError::Tls(e.to_string())
}

fn write_file(path: PathBuf, body: &str) -> Result<PathBuf, NodeError> {
    fs::write(&path, body).map_err(|e| NodeError::io(&path, e))?;
    Ok(path)
}

/// A development certificate authority (for development and tests only:
/// production uses the bank's own PKI).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa(<key>)")
    }
}

impl DevCa {
    /// Loads the CA that [`write_dev_certs`] wrote into `dir` (its
    /// `ca.key`), to issue more certificates under it.
    pub fn load(dir: &Path) -> Result<Self, NodeError> {
        let path = dir.join("ca.key");
        let pem = fs::read_to_string(&path).map_err(|e| NodeError::io(&path, e))?;
        let key = KeyPair::from_pem(&pem).map_err(tls_err)?;
        Ok(DevCa {
            issuer: Issuer::new(dev_ca_params().map_err(tls_err)?, key),
        })
    }

    /// Writes `DIR/NAME.pem` and `DIR/NAME.key`: a leaf valid for the DNS
    /// name `NAME` (and `localhost`, 127.0.0.1) as both TLS server and
    /// client, from `not_before` to `not_after` (rcgen's far-reaching
    /// defaults when `None`).
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> Result<[PathBuf; 2], NodeError> {
        if ServerName::try_from(name).is_err() || name.contains('/') {
            return Err(NodeError::Tls(format!("{name:?} is not a valid DNS name")));
        }
        fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut params = CertificateParams::new(vec![
            name.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ])
        .map_err(tls_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some((not_before, not_after)) = validity {
            params.not_before = not_before;
            params.not_after = not_after;
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(tls_err)?;
        Ok([
            write_file(dir.join(format!("{name}.pem")), &cert.pem())?,
            write_file(dir.join(format!("{name}.key")), &key.serialize_pem())?,
        ])
    }
}

/// Writes a development CA and one leaf certificate per name into `dir`:
/// `ca.pem`, `ca.key`, `NAME.pem`, `NAME.key`. Each leaf is valid for the DNS
/// name `NAME` (and `localhost`, 127.0.0.1) as both TLS server and client.
/// For development and tests only: production uses the bank's own PKI.
pub fn write_dev_certs(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>, NodeError> {
    fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let ca_cert = dev_ca_params()
        .and_then(|p| p.self_signed(&ca_key))
        .map_err(tls_err)?;
    let mut written = vec![
        write_file(dir.join("ca.pem"), &ca_cert.pem())?,
        write_file(dir.join("ca.key"), &ca_key.serialize_pem())?,
    ];
    let ca = DevCa {
        issuer: Issuer::new(dev_ca_params().map_err(tls_err)?, ca_key),
    };
    for name in names {
        written.extend(ca.issue(dir, name, None)?);
    }
    Ok(written)
}
