//! Automatic certificates (ACME, RFC 8555): `--acme-domain`.
//!
//! The node keeps its ACME account key and its issued certificate and key
//! in `<data-dir>/acme/` (files 0600), reuses a stored certificate at start
//! while it covers the configured names and has not expired, and renews it
//! once less than a third of its lifetime is left (checked at start and
//! twice a day). A new certificate is swapped in with [`Certs::set`]: the
//! next handshake presents it, connected listeners keep their connection.
//!
//! Challenges: TLS-ALPN-01 (RFC 8737) on the HTTPS port through
//! [`Certs::set_challenge`], or HTTP-01 on the `--http-redirect` port
//! through [`App::acme_http01`]. With a redirect port HTTP-01 is preferred
//! (a port 80 is what most firewalls leave open), without one TLS-ALPN-01.
//! A failed order is logged with the server's reason and retried with
//! backoff; a node with no certificate yet still runs and says why in
//! `/readyz` and to plain requests on its HTTPS port.
//!
//! The decisions (when to renew, which challenge, how long to back off,
//! what a certificate's validity is) are plain functions; [`run`] is the
//! IO shell around them and instant-acme.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

use amphi_tls::Certs;

use crate::app::App;

/// Let's Encrypt's production directory, the default of `--acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How often the certificate's age is looked at when nothing is due.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// One whole order (account, challenges, finalization, download) at most.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// The first retry after a failed order; doubled per failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What the ACME client needs to know.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The names on the certificate (lowercase, sorted, no duplicates).
    pub domains: Vec<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// Contact address given to the CA.
    pub email: Option<String>,
    /// PEM roots trusted for the directory's HTTPS instead of the system's.
    pub ca_root: Option<PathBuf>,
    /// `<data-dir>/acme`.
    pub dir: PathBuf,
    /// Whether the redirect port is there to answer HTTP-01.
    pub http01: bool,
    /// Testing: renew once the certificate is this old.
    pub renew_after: Option<Duration>,
}

impl AcmeConfig {
    /// Checks the names (`--acme-domain`): DNS names only.
    pub fn new(
        domains: &[String],
        directory: String,
        email: Option<String>,
        ca_root: Option<PathBuf>,
        data_dir: &Path,
        http01: bool,
        renew_after: Option<Duration>,
    ) -> anyhow::Result<AcmeConfig> {
        let mut names = Vec::with_capacity(domains.len());
        for d in domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&d) {
                bail!("--acme-domain {d:?} is not a DNS name");
            }
            names.push(d);
        }
        names.sort();
        names.dedup();
        if names.is_empty() {
            bail!("--acme-domain needs at least one name");
        }
        if !directory.starts_with("https://") {
            bail!("--acme-directory must be an https:// URL");
        }
        Ok(AcmeConfig {
            domains: names,
            directory,
            email,
            ca_root,
            dir: data_dir.join("acme"),
            http01,
            renew_after,
        })
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    fn domains_path(&self) -> PathBuf {
        self.dir.join("domains")
    }
    /// One account per directory (staging and production do not mix).
    fn account_path(&self) -> PathBuf {
        use sha2::Digest;
        let h = sha2::Sha256::digest(self.directory.as_bytes());
        let tag: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("account-{tag}.json"))
    }

    fn names(&self) -> String {
        self.domains.join(", ")
    }

    /// The stored certificate, if it is for these names, loads, and has
    /// not expired.
    pub fn load_stored(&self) -> Option<(CertifiedKey, Validity)> {
        let names = std::fs::read_to_string(self.domains_path()).ok()?;
        if names.lines().collect::<Vec<_>>() != self.domains {
            return None;
        }
        let chain = CertificateDer::pem_file_iter(self.cert_path())
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_file(self.key_path()).ok()?;
        let validity = validity(chain.first()?)?;
        if validity.not_after <= SystemTime::now() {
            return None;
        }
        Some((certified(chain, key).ok()?, validity))
    }

    fn store(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        // The key first: a crash between the two leaves a pair that does
        // not match, which is not loaded (a new order follows), never a
        // certificate served with the wrong key.
        write_private(&self.key_path(), key_pem.as_bytes())?;
        write_private(&self.cert_path(), chain_pem.as_bytes())?;
        write_private(&self.domains_path(), self.domains.join("\n").as_bytes())
    }
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Writes `bytes` to `path` readable by the owner only, atomically
/// (written beside it, then renamed).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or_else(|| anyhow!("no directory"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// When a certificate valid for `v` is renewed: once a third of its
/// lifetime is left (Let's Encrypt's 90 days: at 60), or once it is
/// `force_after` old (testing).
pub fn renew_at(v: Validity, force_after: Option<Duration>) -> SystemTime {
    let life = v
        .not_after
        .duration_since(v.not_before)
        .unwrap_or(Duration::ZERO);
    let at = v.not_before + life * 2 / 3;
    match force_after {
        Some(f) => at.min(v.not_before + f),
        None => at,
    }
}

/// The wait after `failures` failed orders in a row (≥ 1).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// Which of the `offered` challenges to answer: HTTP-01 when the redirect
/// port can serve it and it is offered, else TLS-ALPN-01, else HTTP-01
/// if servable. `None`: nothing this node can answer (e.g. DNS-01 only).
pub fn pick_challenge(offered: &[ChallengeType], http01: bool) -> Option<ChallengeType> {
    let has = |t: &ChallengeType| offered.contains(t);
    if http01 && has(&ChallengeType::Http01) {
        Some(ChallengeType::Http01)
    } else if has(&ChallengeType::TlsAlpn01) {
        Some(ChallengeType::TlsAlpn01)
    } else {
        None
    }
}

/// The validity of an X.509 certificate (DER), read without a full parse:
/// Certificate → TBSCertificate → [version], serial, signature, issuer,
/// validity. `None` if the DER is not shaped so.
pub fn validity(cert: &[u8]) -> Option<Validity> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = der(tbs)?;
    if tag != 0xa0 {
        rest = tbs; // no explicit version: v1
    }
    for want in [0x02, 0x30, 0x30] {
        let (tag, _, r) = der(rest)?;
        if tag != want {
            return None;
        }
        rest = r;
    }
    let (0x30, v, _) = der(rest)? else {
        return None;
    };
    let (t1, nb, r) = der(v)?;
    let (t2, na, _) = der(r)?;
    Some(Validity {
        not_before: x509_time(t1, nb)?,
        not_after: x509_time(t2, na)?,
    })
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, r) = rest.split_at(n);
        rest = r;
        bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn x509_time(tag: u8, s: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(s).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        (0x18, 14) => (s.get(..4)?.parse().ok()?, &s[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().into())
}

/// A chain and key as rustls signs with them (amphi's one provider).
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<CertifiedKey> {
    CertifiedKey::from_der(chain, key, &amphi_tls::provider())
        .map_err(|e| anyhow!("certificate key: {e}"))
}

/// The self-signed certificate TLS-ALPN-01 validation expects for
/// `domain` (RFC 8737 §3): the name, and the key authorization's digest in
/// the critical acmeIdentifier extension.
fn alpn_challenge_cert(domain: &str, digest: &[u8]) -> anyhow::Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
    // Not `certified`: its key check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension.
    let signer = amphi_tls::provider()
        .key_provider
        .load_private_key(key_der.into())
        .map_err(|e| anyhow!("challenge key: {e}"))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// instant-acme's HTTP: hyper over rustls (amphi's one provider), trusting the system's
/// roots or `--acme-ca-root`.
struct Http(
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
);

impl Http {
    fn new(ca_root: Option<&Path>) -> anyhow::Result<Http> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_root {
            Some(path) => {
                for c in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading --acme-ca-root {}", path.display()))?
                {
                    roots.add(c.with_context(|| format!("parsing {}", path.display()))?)?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    bail!(
                        "no system CA certificates to trust the ACME directory with (install ca-certificates)"
                    );
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(amphi_tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Http(client))
    }
}

impl HttpClient for Http {
    fn request(
        &self,
        req: axum::http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(rsp) => Ok(BytesResponse::from(rsp)),
                Err(e) => Err(instant_acme::Error::Other(Box::new(e))),
            }
        })
    }
}

/// Keeps the node's certificate issued and fresh, forever. `current` is the
/// validity of the certificate already loaded from the data dir, if any.
pub async fn run(cfg: AcmeConfig, certs: Arc<Certs>, app: Arc<App>, current: Option<Validity>) {
    let mut current = current;
    let mut failures = 0u32;
    loop {
        let now = SystemTime::now();
        let due = current.map_or(now, |v| renew_at(v, cfg.renew_after));
        if let Ok(wait) = due.duration_since(now)
            && !wait.is_zero()
        {
            tokio::time::sleep(wait.min(CHECK_EVERY)).await;
            continue;
        }
        let what = if current.is_some() {
            "renewing"
        } else {
            "requesting"
        };
        eprintln!(
            "amphi: ACME: {what} a certificate for {} from {}",
            cfg.names(),
            cfg.directory
        );
        let result = match tokio::time::timeout(ORDER_TIMEOUT, order(&cfg, &certs, &app)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("the order took longer than {ORDER_TIMEOUT:?}")),
        };
        match result {
            Ok((key, validity)) => {
                certs.set(key);
                current = Some(validity);
                failures = 0;
                *app.cert_pending.write() = None;
                let left = validity
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                eprintln!(
                    "amphi: ACME: certificate for {} installed (valid {} more days), kept in {}",
                    cfg.names(),
                    left.as_secs() / 86_400,
                    cfg.dir.display()
                );
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(failures);
                let msg = format!("{e:#}");
                tracing::warn!(error = %msg, retry_in = ?wait, "ACME order failed");
                eprintln!(
                    "amphi: ACME: the certificate for {} could not be obtained: {msg}; retrying in {}s",
                    cfg.names(),
                    wait.as_secs()
                );
                let expired = current.is_some_and(|v| v.not_after <= SystemTime::now());
                if current.is_none() || expired {
                    // Nothing valid to serve: /readyz says so (a renewal
                    // failing for a third of the lifetime ends here).
                    let what = if expired {
                        "the TLS certificate expired"
                    } else {
                        "no TLS certificate yet"
                    };
                    *app.cert_pending.write() = Some(format!(
                        "{what}: the ACME order for {} failed ({msg}); retrying in {}s",
                        cfg.names(),
                        wait.as_secs()
                    ));
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The account: the stored one for this directory, or a new one (stored).
async fn account(cfg: &AcmeConfig) -> anyhow::Result<Account> {
    let path = cfg.account_path();
    let http = || Http::new(cfg.ca_root.as_deref()).map(|h| Box::new(h) as Box<dyn HttpClient>);
    if let Ok(bytes) = std::fs::read(&path) {
        let creds: AccountCredentials = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the ACME account {}", path.display()))?;
        return Account::builder_with_http(http()?)
            .from_credentials(creds)
            .await
            .with_context(|| format!("reaching the ACME directory {}", cfg.directory));
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http()?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", cfg.directory))?;
    write_private(&path, &serde_json::to_vec(&creds)?)?;
    eprintln!(
        "amphi: ACME: account {} created, key kept in {}",
        account.id(),
        path.display()
    );
    Ok(account)
}

/// Challenge responses put up for one order, taken down when it ends
/// (whatever way it ends).
struct Posted<'a> {
    certs: &'a Certs,
    app: &'a App,
    alpn: Vec<String>,
    http: Vec<String>,
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        for d in &self.alpn {
            self.certs.clear_challenge(d);
        }
        let mut tokens = self.app.acme_http01.write();
        for t in &self.http {
            tokens.remove(t);
        }
    }
}

/// One order, start to certificate; stores and returns it.
async fn order(
    cfg: &AcmeConfig,
    certs: &Certs,
    app: &App,
) -> anyhow::Result<(CertifiedKey, Validity)> {
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = cfg
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = match account.new_order(&NewOrder::new(&ids)).await {
        Ok(o) => o,
        Err(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| {
                t.ends_with(":accountDoesNotExist") || t.ends_with(":unauthorized")
            }) =>
        {
            // The CA forgot the account (a test CA restarted, a
            // deactivated account): a new one at the next try.
            let _ = std::fs::remove_file(cfg.account_path());
            bail!("the CA no longer knows the stored account ({p}); a new one will be created");
        }
        Err(e) => return Err(e).context("creating the order"),
    };
    let mut posted = Posted {
        certs,
        app,
        alpn: Vec::new(),
        http: Vec::new(),
    };
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.context("fetching an authorization")?;
        let domain = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => bail!("the authorization for {domain} is {other:?}"),
        }
        let offered: Vec<ChallengeType> =
            authz.challenges.iter().map(|c| c.r#type.clone()).collect();
        let Some(kind) = pick_challenge(&offered, cfg.http01) else {
            bail!(
                "the CA offers no challenge this node can answer for {domain} (offered: {offered:?}; HTTP-01 needs --http-redirect)"
            );
        };
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| anyhow!("challenge {kind:?} vanished"))?;
        let key_auth = challenge.key_authorization();
        match kind {
            ChallengeType::Http01 => {
                app.acme_http01
                    .write()
                    .insert(challenge.token.clone(), key_auth.as_str().to_owned());
                posted.http.push(challenge.token.clone());
            }
            _ => {
                certs.set_challenge(
                    &domain,
                    alpn_challenge_cert(&domain, key_auth.digest().as_ref())?,
                );
                posted.alpn.push(domain.clone());
            }
        }
        challenge
            .set_ready()
            .await
            .with_context(|| format!("answering the {kind:?} challenge for {domain}"))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&retry)
        .await
        .context("waiting for the CA to validate")?;
    if status != OrderStatus::Ready {
        // Say why: the failed challenge's problem.
        let mut why = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(Ok(mut a)) = authzs.next().await {
            if let Ok(state) = a.refresh().await {
                for c in &state.challenges {
                    if let Some(p) = &c.error {
                        why.push(format!("{:?}: {p}", c.r#type));
                    }
                }
            }
        }
        bail!("the order is {status:?}: {}", why.join("; "));
    }
    drop(posted);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(cfg.domains.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order
        .finalize_csr(csr.der())
        .await
        .context("finalizing the order")?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .context("downloading the certificate")?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the CA's certificate chain: {e}"))?;
    let valid = chain
        .first()
        .and_then(|c| validity(c))
        .ok_or_else(|| anyhow!("the CA's certificate has no readable validity"))?;
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
    let certified = certified(chain, key_der.into())?;
    cfg.store(&chain_pem, &key.serialize_pem())?;
    Ok((certified, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let k = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&k).unwrap().der().to_vec()
    }

    fn ts(y: i32, m: u8, d: u8) -> SystemTime {
        let date = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
        date.midnight().assume_utc().into()
    }

    #[test]
    fn validity_is_read_from_utc_and_generalized_times() {
        let v = validity(&cert_valid((2026, 1, 1), (2026, 4, 1))).unwrap();
        assert_eq!(v.not_before, ts(2026, 1, 1));
        assert_eq!(v.not_after, ts(2026, 4, 1));
        // Past 2049 X.509 switches to GeneralizedTime.
        let v = validity(&cert_valid((2049, 6, 1), (2051, 6, 1))).unwrap();
        assert_eq!(v.not_after, ts(2051, 6, 1));
    }

    #[test]
    fn garbage_has_no_validity() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let mut c = cert_valid((2026, 1, 1), (2026, 4, 1));
        c.truncate(c.len() / 3);
        assert_eq!(validity(&c), None);
        for n in 0..64 {
            let _ = validity(&cert_valid((2026, 1, 1), (2026, 4, 1))[n..]);
        }
    }

    #[test]
    fn renewal_comes_when_a_third_is_left_or_when_forced() {
        let v = Validity {
            not_before: ts(2026, 1, 1),
            not_after: ts(2026, 1, 1) + Duration::from_secs(90 * 86_400),
        };
        assert_eq!(
            renew_at(v, None),
            v.not_before + Duration::from_secs(60 * 86_400)
        );
        let forced = renew_at(v, Some(Duration::from_secs(20)));
        assert_eq!(forced, v.not_before + Duration::from_secs(20));
        // A backwards certificate is due at once.
        let bad = Validity {
            not_before: v.not_after,
            not_after: v.not_before,
        };
        assert_eq!(renew_at(bad, None), bad.not_before);
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(3));
        assert_eq!(backoff(2), Duration::from_secs(6));
        assert_eq!(backoff(3), Duration::from_secs(12));
        assert_eq!(backoff(30), Duration::from_secs(3600));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn the_challenge_follows_the_ports() {
        use ChallengeType::*;
        let all = [Http01, Dns01, TlsAlpn01];
        assert_eq!(pick_challenge(&all, true), Some(Http01));
        assert_eq!(pick_challenge(&all, false), Some(TlsAlpn01));
        assert_eq!(pick_challenge(&[Http01], false), None);
        assert_eq!(pick_challenge(&[Http01], true), Some(Http01));
        assert_eq!(pick_challenge(&[TlsAlpn01], true), Some(TlsAlpn01));
        assert_eq!(pick_challenge(&[Dns01], true), None);
    }

    #[test]
    fn names_are_checked_and_normalized() {
        let dir = Path::new("/tmp/x");
        let d = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            AcmeConfig::new(&names, LETS_ENCRYPT.into(), None, None, dir, false, None)
        };
        let c = d(&["B.example.org.", "a.example.org", "b.example.org"]).unwrap();
        assert_eq!(c.domains, ["a.example.org", "b.example.org"]);
        assert_eq!(c.dir, dir.join("acme"));
        assert!(d(&[]).is_err());
        assert!(d(&["bad name"]).is_err());
        assert!(d(&["*.example.org"]).is_err());
        assert!(d(&["-a.example.org"]).is_err());
        let plain = AcmeConfig::new(
            &["a.example.org".into()],
            "http://x/dir".into(),
            None,
            None,
            dir,
            false,
            None,
        );
        assert!(plain.is_err());
    }

    #[test]
    fn a_stored_certificate_is_reused_only_for_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a.test".to_owned()];
        let cfg = AcmeConfig::new(
            &names,
            LETS_ENCRYPT.into(),
            None,
            None,
            dir.path(),
            false,
            None,
        )
        .unwrap();
        assert!(cfg.load_stored().is_none());
        let ck = rcgen::generate_simple_self_signed(names.clone()).unwrap();
        cfg.store(&ck.cert.pem(), &ck.signing_key.serialize_pem())
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cfg.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (_, v) = cfg.load_stored().expect("stored certificate reused");
        assert!(v.not_after > SystemTime::now());
        let other = AcmeConfig::new(
            &["b.test".to_owned()],
            LETS_ENCRYPT.into(),
            None,
            None,
            dir.path(),
            false,
            None,
        )
        .unwrap();
        assert!(
            other.load_stored().is_none(),
            "other names need a new order"
        );
    }

    #[test]
    fn the_alpn_challenge_certificate_loads() {
        let ck = alpn_challenge_cert("a.test", &[7u8; 32]).unwrap();
        assert_eq!(ck.cert.len(), 1);
    }
}
