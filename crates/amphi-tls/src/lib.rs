//! HTTPS for amphi, without a proxy in the path of every listener.
//!
//! - [`Certs`]: the node's certificate, loaded from PEM files and swapped
//!   in place when they change (a renewal never drops a connected
//!   listener), or set by the ACME client; also the TLS-ALPN-01 challenge
//!   certificates while an order is pending.
//! - [`provider`]: the one crypto provider of the whole binary (rustls's
//!   aws-lc-rs provider; str0m's DTLS/SRTP, rcgen, the ACME client, NATS
//!   and S3 use the same library), installed as the process default by
//!   [`install_provider`].
//! - [`server_config`]: the rustls server configuration, with session
//!   resumption (a stateful cache and tickets) and secret extraction
//!   enabled.
//! - [`RecordSealer`]: after the handshake, a listener stream's traffic
//!   keys leave rustls; the fan-out worker seals each shared page into TLS
//!   1.3 records itself, into its own scratch buffer. Per listener that is
//!   a key, an IV and a record counter, with no read or write buffer. The
//!   sealing is deterministic (same keys, same record number, same page →
//!   same bytes), so a listener whose socket took part of a record keeps
//!   only an offset and the record number it started at, exactly like a
//!   plaintext listener keeps an offset into the shared page.
//!   [`RecordOpener`] reads what a listener sends (WebSocket control
//!   frames, alerts).
//!
//! This is what kernel TLS does; where the kernel offers it the keys can go
//! to the kernel instead ([`ktls`]).

mod certs;
pub mod ktls;
mod record;

use std::sync::Arc;

pub use certs::{CertError, Certs};
pub use record::{
    ContentType, OpenError, Opened, RECORD_OVERHEAD, RecordOpener, RecordSealer, sealed_len,
};

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The crypto provider every rustls configuration of amphi is built with:
/// aws-lc-rs, the library str0m's DTLS and SRTP already use, so one crypto
/// library is compiled into the binary (no ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs [`provider`] as the process default, for the rustls users that
/// take the default (async-nats, object_store's HTTP client). Idempotent:
/// a default already installed (by an earlier call) is kept.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The rustls server configuration of a node: TLS 1.3 (the fan-out seals
/// TLS 1.3 records itself), HTTP/1.1 over ALPN, resumption by cache and
/// tickets, and the secrets extractable once the handshake is done.
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    cfg.enable_secret_extraction = true;
    // A reconnecting listener resumes instead of paying a full handshake:
    // tickets (stateless, keys rotated) and a bounded cache for clients
    // that do not take tickets.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.send_tls13_tickets = 1;
    // A listener stream never gets early data.
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// A client configuration trusting exactly `roots` (tests and the load
/// generator).
pub fn client_config(
    roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
