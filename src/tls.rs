//! TLS on the public listeners (certificates from PEM files, one chosen per connection by SNI,
//! ALPN h2 and http/1.1, TLS 1.2 and 1.3 only: rustls speaks nothing older), and TLS to the
//! backends of a pool with `[pool.tls]`.
//!
//! The config check loads every certificate (so `--check` and a reload refuse a broken file
//! with its location); the runtime builds a `ServerConfig` from the same files at start and on
//! every reload, and swaps it in for new connections: connections already open keep theirs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{BackendTlsConfig, CertificateConfig};

/// One certificate chain with its key, and the names it serves.
pub struct LoadedCertificate {
    /// The chain and the signing key.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subject alternative names (wildcards as `*.example.com`).
    pub names: Vec<String>,
}

/// Reads a PEM certificate chain and its PEM private key, checks that they belong together,
/// and reads the names the certificate is for.
pub fn load(cert: &Path, key: &Path) -> Result<LoadedCertificate, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{} holds no certificate", cert.display()));
    };
    let names = names_of(leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?;
    let provider = ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "the key in {} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names a certificate is for: its subject alternative names, else its common name.
fn names_of(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(alternatives)) = parsed.subject_alternative_name() {
        for name in &alternatives.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// Picks a certificate by the name the client asked for (SNI): an exact name, then a wildcard
/// for its parent domain; else (no SNI, unknown name) the first certificate configured.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcards", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniResolver {
    fn new(certificates: Vec<LoadedCertificate>) -> Option<SniResolver> {
        let default = Arc::clone(&certificates.first()?.key);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for certificate in certificates {
            for name in certificate.names {
                // The first certificate to claim a name keeps it.
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| Arc::clone(&certificate.key));
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        let by_wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        };
        Arc::clone(
            self.exact
                .get(&name)
                .or_else(by_wildcard)
                .unwrap_or(&self.default),
        )
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The rustls server settings for `certificates`: SNI, ALPN h2 and http/1.1, TLS 1.2 and 1.3.
pub fn server_config(certificates: &[CertificateConfig]) -> Result<Arc<ServerConfig>, String> {
    let loaded = certificates
        .iter()
        .map(|c| load(&c.cert, &c.key))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = SniResolver::new(loaded).ok_or("no certificate configured")?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the CA certificates of a PEM file (for `[pool.tls] ca`).
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for certificate in certificates {
        let certificate = certificate
            .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        roots
            .add(certificate)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(roots)
}

/// The operating system's trust store, for `[pool.tls]` without `ca` (rustls-native-certs:
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the system's CA bundle). An error when it
/// holds no usable certificate: a pool verifying against nothing could reach no backend, so
/// tandem refuses the config rather than fail every connection later.
pub fn native_roots() -> Result<rustls::RootCertStore, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(loaded.certs);
    let reasons: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    if roots.is_empty() {
        let reasons = match reasons.is_empty() {
            true => String::new(),
            false => format!(" ({})", reasons.join("; ")),
        };
        return Err(format!(
            "the operating system's trust store holds no CA certificate{reasons}: set `ca = \"/path/to/backend-ca.pem\"`, or install the system's CA certificates (Debian: the ca-certificates package)"
        ));
    }
    for reason in reasons {
        tracing::warn!(%reason, "part of the operating system's trust store is unreadable");
    }
    Ok(roots)
}

/// The rustls client settings for a pool's backends: its CA file, else the operating system's
/// trust store; with `insecure_skip_verify`, no verification at all. (hyper-rustls sets ALPN
/// to http/1.1 itself.)
pub fn client_config(tls: Option<&BackendTlsConfig>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?;
    let config = match tls {
        Some(tls) if tls.insecure_skip_verify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        Some(BackendTlsConfig { ca: Some(ca), .. }) => builder
            .with_root_certificates(load_roots(ca)?)
            .with_no_client_auth(),
        Some(_) => builder
            .with_root_certificates(native_roots()?)
            .with_no_client_auth(),
        // A pool without TLS never makes a TLS connection; its settings go unused.
        None => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `insecure_skip_verify`: accepts every certificate (signatures on the handshake are still
/// checked, so the session is encrypted, but with whom is unknown).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connector for a pool's backends: `inner` for plain HTTP, TLS over it for `https` URIs.
/// A settings error (a CA file gone, or the system trust store emptied, since the config check)
/// is logged, and the pool's TLS connections then fail with a clear reason instead of tandem
/// failing to run.
pub fn backend_connector<C>(
    pool: &str,
    tls: Option<&BackendTlsConfig>,
    inner: C,
) -> hyper_rustls::HttpsConnector<C> {
    let config = client_config(tls).unwrap_or_else(|error| {
        tracing::error!(pool, %error, "backend TLS settings unusable: TLS connections of this pool will fail");
        client_config(None).expect("empty roots always make a client config")
    });
    if tls.is_some_and(|tls| tls.insecure_skip_verify) {
        tracing::warn!(
            pool,
            "[pool.tls] insecure_skip_verify: backend certificates are NOT verified; anyone on the path can impersonate them"
        );
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let fixed_name = tls
        .and_then(|tls| tls.server_name.clone())
        .and_then(|name| rustls_pki_types::ServerName::try_from(name).ok());
    let builder = match fixed_name {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    builder.enable_http1().wrap_connector(inner)
}

/// The rustls settings of mutual TLS between peers: as a server, a client certificate of the
/// cluster's CA is required; as a client, the peer's certificate must chain to it too.
pub fn peer_configs(
    tls: &crate::config::PeerTlsConfig,
) -> Result<(Arc<ServerConfig>, Arc<rustls::ClientConfig>), String> {
    let provider = Arc::new(ring::default_provider());
    let roots = Arc::new(load_roots(&tls.ca)?);
    let mine = load(&tls.cert, &tls.key)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| format!("peer TLS: {e}"))?;
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("peer TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            SniResolver::new(vec![LoadedCertificate {
                key: Arc::clone(&mine.key),
                names: mine.names.clone(),
            }])
            .ok_or("no peer certificate")?,
        ));
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("peer TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(FixedClientCertificate(mine.key)));
    Ok((Arc::new(server), Arc::new(client)))
}

/// The client certificate a peer presents: always this node's.
#[derive(Debug)]
struct FixedClientCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
