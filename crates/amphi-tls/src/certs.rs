//! The node's certificate: from PEM files (re-read when they change) or
//! set by the ACME client, swapped without touching open connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no certificate in the PEM file")]
    NoCertificate(PathBuf),
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("the private key does not fit the certificate or is unsupported: {0}")]
    Key(String),
}

/// Where a file-backed certificate comes from, and what it was.
#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    stamp: Option<(SystemTime, SystemTime, u64, u64)>,
}

/// The certificate a node presents, and the TLS-ALPN-01 challenge
/// certificates of pending ACME orders.
pub struct Certs {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    files: parking_lot::Mutex<Option<Files>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("loaded", &self.current.read().is_some())
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Certs {
    /// No certificate yet (an ACME node before its first order completes).
    pub fn empty() -> Certs {
        Certs {
            current: RwLock::new(None),
            challenges: RwLock::new(HashMap::new()),
            files: parking_lot::Mutex::new(None),
        }
    }

    /// A certificate chain and its key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Certs, CertError> {
        let certs = Certs::empty();
        certs.set(certified(chain, key)?);
        Ok(certs)
    }

    /// A certificate chain and key from PEM files, re-read by
    /// [`Certs::reload_if_changed`].
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Certs, CertError> {
        let certs = Certs::empty();
        *certs.files.lock() = Some(Files {
            cert: cert.to_owned(),
            key: key.to_owned(),
            stamp: None,
        });
        certs.reload_if_changed()?;
        Ok(certs)
    }

    /// Re-reads the PEM files if either changed since the last read; a
    /// broken pair keeps the certificate in use. Returns whether it changed.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let mut files = self.files.lock();
        let Some(f) = files.as_mut() else {
            return Ok(false);
        };
        let now = stamp(&f.cert)
            .zip(stamp(&f.key))
            .map(|(c, k)| (c.0, k.0, c.1, k.1));
        if now.is_some() && now == f.stamp {
            return Ok(false);
        }
        let chain = read_chain(&f.cert)?;
        let key = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| CertError::Pem {
            path: f.key.clone(),
            message: e.to_string(),
        })?;
        self.set(certified(chain, key)?);
        f.stamp = now;
        Ok(true)
    }

    /// Presents `key` from the next handshake on.
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write() = Some(Arc::new(key));
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.read().is_some()
    }

    /// The certificate presented now (its chain, leaf first).
    pub fn current_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.current.read().as_ref().map(|c| c.cert.clone())
    }

    /// Presents `key` to TLS-ALPN-01 validation of `domain` (RFC 8737).
    pub fn set_challenge(&self, domain: &str, key: CertifiedKey) {
        self.challenges
            .write()
            .insert(domain.to_ascii_lowercase(), Arc::new(key));
    }

    /// Removes `domain`'s challenge certificate.
    pub fn clear_challenge(&self, domain: &str) {
        self.challenges.write().remove(&domain.to_ascii_lowercase());
    }
}

/// A certificate chain and key as rustls signs with them ([`crate::provider`]).
pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertError> {
    CertifiedKey::from_der(chain, key, &crate::provider())
        .map_err(|e| CertError::Key(e.to_string()))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(source) => CertError::Io {
            path: path.to_owned(),
            source,
        },
        other => CertError::Pem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })?;
    let chain = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == crate::ACME_TLS_ALPN));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.read().get(&name).cloned();
        }
        self.current.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn pem_files_load_and_a_changed_pair_is_picked_up() {
        let dir = std::env::temp_dir().join(format!("amphi-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = write_pair(&dir, "one.test");
        let certs = Certs::from_pem_files(&c, &k).unwrap();
        let first = certs.current_chain().unwrap();
        assert!(
            !certs.reload_if_changed().unwrap(),
            "unchanged files are not re-read"
        );
        // A renewal: new files (a different size is enough to notice even
        // within the mtime's resolution).
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pair(&dir, "a-longer-name.test");
        assert!(certs.reload_if_changed().unwrap());
        assert_ne!(certs.current_chain().unwrap(), first);
        // A broken pair keeps the certificate in use.
        std::fs::write(&k, "not a key").unwrap();
        assert!(certs.reload_if_changed().is_err());
        assert!(certs.is_loaded());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_or_empty_files_are_clear_errors() {
        let e = Certs::from_pem_files(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }
}
