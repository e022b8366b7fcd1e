//! The admin certificate: a self-signed one made on first boot, or the
//! installer's own from `admin.tls_certificate`/`admin.tls_private_key`.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::WebError;

/// A PEM certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemPair {
    pub certificate: String,
    pub private_key: String,
}

/// Loads the self-signed pair from `dir`, creating it on first use. The names
/// the installer may type (host name, `localhost`, loopback) are in its SANs.
pub fn self_signed(dir: &Path, hostname: &str) -> Result<PemPair, WebError> {
    // Several services ask at start; one generates, the others then read it.
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    let cert_path = dir.join("self-signed.crt");
    let key_path = dir.join("self-signed.key");
    if let (Ok(certificate), Ok(private_key)) =
        (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path))
    {
        return Ok(PemPair { certificate, private_key });
    }
    std::fs::create_dir_all(dir).map_err(|e| WebError::Tls(format!("{}: {e}", dir.display())))?;
    let names =
        vec![hostname.to_string(), format!("{hostname}.local"), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| WebError::Tls(e.to_string()))?;
    let pair = PemPair { certificate: certified.cert.pem(), private_key: certified.key_pair.serialize_pem() };
    branchgate_config::write_atomically(&key_path, pair.private_key.as_bytes(), 0o600)
        .map_err(|e| WebError::Tls(format!("{}: {e}", key_path.display())))?;
    branchgate_config::write_atomically(&cert_path, pair.certificate.as_bytes(), 0o644)
        .map_err(|e| WebError::Tls(format!("{}: {e}", cert_path.display())))?;
    Ok(pair)
}

/// The certificate the box presents (admin UI, TURN over TLS, SIP over TLS):
/// the installer's from the configuration, or the self-signed one.
pub fn box_certificate(config: &branchgate_config::Config, data_dir: &Path) -> Result<PemPair, WebError> {
    match (&config.admin.tls_certificate, &config.admin.tls_private_key) {
        (Some(certificate), Some(key)) => {
            Ok(PemPair { certificate: certificate.clone(), private_key: key.expose().to_string() })
        }
        _ => self_signed(&data_dir.join("tls"), &config.system.hostname),
    }
}

/// Checks that the PEM texts hold a certificate chain and the private key that matches it.
pub fn check_pair(certificate: &str, private_key: &str) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut certificate.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in the PEM text".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut private_key.as_bytes())
        .map_err(|e| format!("the private key is not valid PEM: {e}"))?
        .ok_or("no private key found in the PEM text")?;
    let signing_key = any_supported_type(&key).map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| format!("the private key does not belong to the certificate: {e}"))?;
    Ok(())
}

pub fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub type SharedPair = Arc<PemPair>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_made_once_and_matches() {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let first = self_signed(dir.path(), "branchgate").expect("generate");
        let second = self_signed(dir.path(), "branchgate").expect("load");
        assert_eq!(first, second);
        check_pair(&first.certificate, &first.private_key).expect("pair matches");
        let other = self_signed(&dir.path().join("other"), "x").expect("generate");
        assert!(check_pair(&first.certificate, &other.private_key).is_err());
        assert!(check_pair("garbage", &first.private_key).is_err());
    }
}
