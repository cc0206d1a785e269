//! Development PKI: a local CA, a server certificate for localhost, and client certificates
//! whose CN names a role, written as PEM files (keys mode 0600). Used by `serve --dev` and by the
//! black-box tests. Production certificates come from the centre's own PKI, never from here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A CA able to issue certificates, loaded from or written to a directory.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA certificate.
    pub cert_pem: String,
}

/// Validity of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// Valid from 2020 to 2100.
    Current,
    /// Expired at the end of 2001 (for refusal tests).
    Expired,
}

impl Authority {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "callguard development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA written by `save`.
    pub fn load(cert: &Path, key: &Path) -> Result<Authority, PkiError> {
        let cert_pem = std::fs::read_to_string(cert).map_err(|source| PkiError::Read {
            path: cert.to_owned(),
            source,
        })?;
        let key_pem = std::fs::read_to_string(key).map_err(|source| PkiError::Read {
            path: key.to_owned(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Authority { issuer, cert_pem })
    }

    /// Writes `ca.crt` and `ca.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_file(&dir.join("ca.crt"), &self.cert_pem, 0o644)?;
        write_file(
            &dir.join("ca.key"),
            &self.issuer.key().serialize_pem(),
            0o600,
        )
    }

    /// Issues a server certificate for `localhost` and 127.0.0.1 / ::1: (cert PEM, key PEM).
    pub fn server(&self) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a client certificate with subject CN `cn`: (cert PEM, key PEM).
    pub fn client(&self, cn: &str, validity: Validity) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (from, to) = match validity {
            Validity::Current => ((2020, 1, 1), (2100, 1, 1)),
            Validity::Expired => ((2000, 1, 1), (2001, 12, 31)),
        };
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`.
pub fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> Result<(), PkiError> {
    write_file(&dir.join(format!("{name}.crt")), &pair.0, 0o644)?;
    write_file(&dir.join(format!("{name}.key")), &pair.1, 0o600)
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), PkiError> {
    std::fs::write(path, content).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        PkiError::Write {
            path: path.to_owned(),
            source,
        }
    })
}
