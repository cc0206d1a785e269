//! TLS for the API: a rustls `ServerConfig` (ring provider, TLS 1.2 and 1.3 only) that requires
//! a client certificate chaining to `server.client_ca`, and the extraction of the verified
//! identity (the certificate's subject CN). A client without a valid certificate is refused
//! during the handshake, before any HTTP byte.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { what: &'static str, path: String },
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("invalid TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error("invalid client CA: {0}")]
    Verifier(String),
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> TlsError {
        match error {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
            other => TlsError::Rustls(other),
        }
    }
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Pem { what, .. } | TlsError::NoCertificate { what, .. } => match *what {
                "private key" => "server.key",
                "client CA" => "server.client_ca",
                _ => "server.cert",
            },
            TlsError::KeyMismatch | TlsError::Rustls(_) => "server.cert, server.key",
            TlsError::Verifier(_) => "server.client_ca",
        }
    }
}

/// The crypto provider used everywhere (one provider only: see dependencies.md pitfall 3).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration from PEM files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(pem_error("certificate", cert))?
        .collect::<Result<_, _>>()
        .map_err(pem_error("certificate", cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: "certificate",
            path: cert.display().to_string(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(pem_error("private key", key))?;
    let mut roots = RootCertStore::empty();
    let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(client_ca)
        .map_err(pem_error("client CA", client_ca))?
        .collect::<Result<_, _>>()
        .map_err(pem_error("client CA", client_ca))?;
    if anchors.is_empty() {
        return Err(TlsError::NoCertificate {
            what: "client CA",
            path: client_ca.display().to_string(),
        });
    }
    for anchor in anchors {
        roots
            .add(anchor)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError + 'p {
    move |error| TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// The subject CN of a verified client certificate (the first one if several).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut names = parsed.subject().iter_common_name();
    let cn = names.next()?.as_str().ok()?.to_owned();
    // Two CNs (`/CN=supervisor/CN=dpo`, or `CN=supervisor+CN=dpo`) name no one: which one a
    // program picks differs from program to program.
    if names.next().is_some() {
        return None;
    }
    match cn.is_empty() || cn.len() > 256 || !printable(&cn) {
        true => None,
        false => Some(cn),
    }
}

/// The actor of a request whose certificate has no usable CN (`user add` refuses it as a CN).
pub const NO_USABLE_CN: &str = "(no usable CN)";

/// No control character, nor an invisible one that changes how the name displays or shows
/// nothing (bidi controls such as U+202E show `\u{202e}opd` as "dpo"; zero-width characters,
/// the soft hyphen, fillers, variation selectors, tags): `bob` and `bob\u{ad}` would read the
/// same in `user list` and the audit log.
pub fn printable(text: &str) -> bool {
    !text.chars().any(|c| {
        c.is_control()
            || matches!(c,
                '\u{ad}'
                | '\u{34f}'
                | '\u{61c}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}')
    })
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn names_that_display_as_another_are_not_printable() {
        assert!(printable("dpo"));
        assert!(printable("opérateur 2"));
        for name in [
            "\u{202e}opd",
            "d\u{200b}po",
            "dpo\u{2066}",
            "\u{feff}dpo",
            "dp\no",
            "bob\u{61c}",
            "bob\u{ad}",
            "bob\u{3164}",
            "bob\u{fe0f}",
        ] {
            assert!(!printable(name), "{}", name.escape_debug());
        }
    }
}
