//! TLS termination (rustls) for https and wss.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSource;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The acceptor new connections get, replaced when the certificate files
/// are read again (SIGHUP): certificates are renewed without a restart, and
/// connections already open keep theirs.
#[derive(Clone)]
pub(crate) struct Tls {
    current: Arc<RwLock<TlsAcceptor>>,
    source: TlsSource,
}

impl Tls {
    pub(crate) fn new(source: &TlsSource) -> anyhow::Result<Tls> {
        let acceptor = match source {
            TlsSource::Files { cert, key } => acceptor(cert, key)?,
            TlsSource::SelfSigned { out } => self_signed(out)?,
        };
        Ok(Tls {
            current: Arc::new(RwLock::new(acceptor)),
            source: source.clone(),
        })
    }

    /// The acceptor for a new connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the certificate and key files again and uses them for new
    /// connections; on an error the current ones stay. Returns the
    /// certificate's path, or `None` for a generated certificate, which is
    /// kept.
    pub(crate) fn reload(&self) -> anyhow::Result<Option<&Path>> {
        let TlsSource::Files { cert, key } = &self.source else {
            return Ok(None);
        };
        let fresh = acceptor(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(Some(cert))
    }
}

/// Generates a certificate for localhost, writes its PEM to `out` for clients
/// to trust, and logs its SHA-256 fingerprint.
fn self_signed(out: &Path) -> anyhow::Result<TlsAcceptor> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).context("cannot generate a certificate")?;
    std::fs::write(out, generated.cert.pem()).with_context(|| {
        format!(
            "cannot write the self-signed certificate to {}",
            out.display()
        )
    })?;
    let der = generated.cert.der().clone();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let fingerprint = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    tracing::warn!(
        certificate = %out.display(),
        sha256 = %fingerprint,
        "serving TLS with a self-signed certificate for localhost (development only)"
    );
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    build(vec![der], key)
}

/// Loads a PEM certificate chain and private key into an acceptor.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificates from {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM certificate in {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate found in {}",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a TLS private key from {}", key.display()))?;
    build(chain, key)
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions available")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
