//! # switchyard-tls
//!
//! TLS for every link of a cluster, in one place: CLI and agents to coordinators, coordinator to
//! coordinator (Raft, and requests a follower forwards to the leader). rustls only, with the
//! `ring` provider.
//!
//! - [`TlsConfig`]: the `[tls]` section every daemon's configuration and the CLI share: the
//!   cluster's CA, this party's certificate and key, or an explicit `insecure = true`.
//! - [`Tls`]: the loaded material, checked when loaded (readable, a key that matches its
//!   certificate, signed by the CA, not expired, the identity expected), and **reloaded without
//!   a restart**: every handshake uses the current files; when they change on disk (checked at
//!   most once per [`RELOAD_CHECK`]) they are read again, and a bad new set is logged and
//!   ignored, keeping the last good one. Replacing certificates is therefore: write the new
//!   files, done.
//! - [`Identity`]: who a certificate speaks for (`switchyard://node/1`, `.../host/h1`,
//!   `.../client/name`), read from the peer's certificate by the coordinator.
//! - `issue` (feature): the CA and certificates `switchyard cert` and test clusters make.

mod identity;
#[cfg(feature = "issue")]
pub mod issue;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

pub use identity::Identity;
pub use rustls;

/// How often, at most, a handshake checks whether the certificate files changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The `[tls]` section of a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA's certificate (PEM): every peer's certificate must be signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This party's certificate (PEM), made by `switchyard cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); readable by the service's user only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Plaintext HTTP instead: tokens and every order cross the network in clear. For a
    /// laboratory only; logged as a warning at every start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl TlsConfig {
    /// A configuration of these files.
    pub fn files(ca: &Path, cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig { ca: Some(ca.into()), cert: Some(cert.into()), key: Some(key.into()), insecure: false }
    }

    /// Plaintext.
    pub fn insecure() -> TlsConfig {
        TlsConfig { insecure: true, ..TlsConfig::default() }
    }

    /// What is wrong with the section (`own_cert`: this party must present a certificate),
    /// each phrased as what to change.
    pub fn problems(&self, own_cert: bool) -> Vec<String> {
        let mut out = Vec::new();
        let files = self.ca.is_some() || self.cert.is_some() || self.key.is_some();
        if self.insecure {
            if files {
                out.push("tls: insecure = true turns TLS off; remove it or remove ca, cert and key".into());
            }
            return out;
        }
        if self.ca.is_none() {
            out.push(
                "tls.ca is missing: name the cluster CA's certificate (`switchyard cert ca` makes one), or set \
                 tls.insecure = true for plaintext"
                    .into(),
            );
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => out.push("tls.key is missing: the private key of tls.cert".into()),
            (None, Some(_)) => out.push("tls.cert is missing: the certificate of tls.key".into()),
            (None, None) if own_cert => {
                out.push("tls.cert and tls.key are missing: make them with `switchyard cert`".into())
            }
            _ => {}
        }
        out
    }
}

/// Why certificates cannot be used, phrased as what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn err(m: impl Into<String>) -> TlsError {
    TlsError(m.into())
}

/// The crypto provider of every configuration (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster's TLS material, reloaded when its files change.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    ca: PathBuf,
    own: Option<(PathBuf, PathBuf)>,
    /// The identity this party's certificate must keep across reloads.
    expect: Option<Identity>,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

struct State {
    checked: Instant,
    stamp: Stamp,
    material: Arc<Material>,
}

/// Modification time and length of each file: a change of either means "read again".
type Stamp = Vec<Option<(SystemTime, u64)>>;

struct Material {
    key: Option<Arc<CertifiedKey>>,
    identity: Option<Identity>,
    not_after: Option<SystemTime>,
    servers: Arc<WebPkiServerVerifier>,
    clients_optional: Arc<dyn ClientCertVerifier>,
    clients_required: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("ca", &self.inner.ca).field("identity", &self.identity()).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads and checks `config` (which must not be `insecure`). `expect`: the identity this
    /// party's certificate must carry (a coordinator's node id, an agent's host).
    pub fn load(config: &TlsConfig, expect: Option<Identity>) -> Result<Tls, TlsError> {
        let ca = config.ca.clone().ok_or_else(|| err("tls.ca is missing"))?;
        let own = match (&config.cert, &config.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(err("tls.cert and tls.key go together")),
        };
        let provider = provider();
        let stamp = stamp(&ca, own.as_ref());
        let material = Arc::new(read(&ca, own.as_ref(), expect.as_ref(), &provider)?);
        let state = Mutex::new(State { checked: Instant::now(), stamp, material });
        Ok(Tls { inner: Arc::new(Inner { ca, own, expect, provider, state }) })
    }

    /// [`Tls::load`] of a configuration, or `None` for `insecure` (with the warning every start
    /// of a plaintext party logs).
    pub fn from_config(config: &TlsConfig, expect: Option<Identity>, what: &str) -> Result<Option<Tls>, TlsError> {
        if config.insecure {
            tracing::warn!(
                "{what}: TLS is off (tls.insecure = true): tokens and every request cross the network in clear"
            );
            return Ok(None);
        }
        Tls::load(config, expect).map(Some)
    }

    /// The material now in use, read again first when the files changed since the last look
    /// (at most once per [`RELOAD_CHECK`]).
    fn current(&self) -> Arc<Material> {
        let i = &self.inner;
        let mut st = i.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let now = stamp(&i.ca, i.own.as_ref());
            if now != st.stamp {
                st.stamp = now;
                match read(&i.ca, i.own.as_ref(), i.expect.as_ref(), &i.provider) {
                    Ok(m) => {
                        tracing::info!(ca = %i.ca.display(), identity = ?m.identity, "TLS certificates reloaded");
                        st.material = Arc::new(m);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificates changed but cannot be used; keeping the previous ones")
                    }
                }
            }
        }
        st.material.clone()
    }

    /// Reads the files again now (SIGHUP), answering why the new set cannot be used.
    pub fn reload(&self) -> Result<(), TlsError> {
        let i = &self.inner;
        let m = read(&i.ca, i.own.as_ref(), i.expect.as_ref(), &i.provider)?;
        let mut st = i.state.lock().unwrap_or_else(|p| p.into_inner());
        st.stamp = stamp(&i.ca, i.own.as_ref());
        st.checked = Instant::now();
        st.material = Arc::new(m);
        Ok(())
    }

    /// The identity of this party's certificate.
    pub fn identity(&self) -> Option<Identity> {
        self.current().identity.clone()
    }

    /// When this party's certificate expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current().not_after
    }

    /// A server configuration presenting this party's certificate; clients must present one
    /// of the cluster's CA when `clients_required`, and may otherwise.
    pub fn server_config(&self, clients_required: bool) -> Arc<rustls::ServerConfig> {
        let verifier = Arc::new(Verifier { tls: self.clone(), required: clients_required });
        let config = rustls::ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(self.clone()));
        Arc::new(config)
    }

    /// An HTTP client builder speaking TLS with this material (see [`http`]).
    pub fn reqwest(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.use_preconfigured_tls(self.client_config()).https_only(true)
    }

    /// A client configuration trusting the cluster's CA and presenting this party's certificate
    /// (if it has one) to servers that ask.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let builder = rustls::ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self.clone()));
        builder.with_client_cert_resolver(Arc::new(self.clone()))
    }
}

/// An HTTP client builder for `tls` (plaintext when `None`), and the URL scheme to use with it.
pub fn http(builder: reqwest::ClientBuilder, tls: Option<&Tls>) -> (reqwest::ClientBuilder, &'static str) {
    match tls {
        Some(t) => (t.reqwest(builder), "https"),
        None => (builder, "http"),
    }
}

/// `host:port` of an endpoint written with or without a scheme (`https://a:1/` → `a:1`).
pub fn strip_scheme(endpoint: &str) -> &str {
    let e = endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://")).unwrap_or(endpoint);
    e.trim_end_matches('/')
}

fn stamp(ca: &Path, own: Option<&(PathBuf, PathBuf)>) -> Stamp {
    let mut paths = vec![ca];
    if let Some((c, k)) = own {
        paths.push(c);
        paths.push(k);
    }
    paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// Reads and checks one set of files.
fn read(
    ca: &Path,
    own: Option<&(PathBuf, PathBuf)>,
    expect: Option<&Identity>,
    provider: &Arc<CryptoProvider>,
) -> Result<Material, TlsError> {
    let cas = certs(ca, "the CA certificate (tls.ca)")?;
    let mut roots = RootCertStore::empty();
    for c in &cas {
        roots.add(c.clone()).map_err(|e| err(format!("{}: not a usable CA certificate: {e}", ca.display())))?;
    }
    let roots = Arc::new(roots);
    let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| err(format!("{}: {e}", ca.display())))?;
    let clients_required = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| err(format!("{}: {e}", ca.display())))?;
    let clients_optional = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| err(format!("{}: {e}", ca.display())))?;
    let (mut key, mut identity, mut not_after) = (None, None, None);
    if let Some((cert_path, key_path)) = own {
        let chain = certs(cert_path, "the certificate (tls.cert)")?;
        private_file(key_path, "a private key").map_err(TlsError)?;
        let pem =
            std::fs::read(key_path).map_err(|e| err(format!("read the key (tls.key) {}: {e}", key_path.display())))?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| err(format!("{}: not a PEM private key: {e}", key_path.display())))?;
        let signer = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| err(format!("{}: unusable private key: {e}", key_path.display())))?;
        let certified = CertifiedKey::new(chain.clone(), signer);
        certified
            .keys_match()
            .map_err(|e| err(format!("{} is not the key of {}: {e}", key_path.display(), cert_path.display())))?;
        let leaf = &chain[0];
        let expiry = validity(leaf).map_err(|e| err(format!("{}: {e}", cert_path.display())))?;
        let now = UnixTime::now();
        clients_required.verify_client_cert(leaf, &chain[1..], now).map_err(|e| {
            err(format!(
                "{} cannot be used with the CA {}: {e} (make a new one with `switchyard cert`)",
                cert_path.display(),
                ca.display()
            ))
        })?;
        let id = Identity::of_certificate(leaf);
        if let Some(want) = expect {
            if id.as_ref() != Some(want) {
                let found = id.as_ref().map_or("no Switchyard identity".to_string(), |i| i.to_string());
                return Err(err(format!(
                    "{} is the certificate of {found}, but this is {want}: use the certificate made for it",
                    cert_path.display()
                )));
            }
        }
        key = Some(Arc::new(certified));
        identity = id;
        not_after = Some(expiry);
    }
    Ok(Material { key, identity, not_after, servers, clients_optional, clients_required })
}

/// Refuses a file holding `what` (a private key, a configuration with secrets) when others
/// may read or write it (the mode's last digit): every file with a secret of a party, its
/// key and its configuration, goes through here.
pub fn private_file(path: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} holds {what} but others may read or write it (mode {mode:03o}): chmod o-rwx {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Every certificate of a PEM file (at least one).
fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| err(format!("read {what} {}: {e}", path.display())))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("{}: not a PEM certificate file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// What `switchyard cert show` tells of a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub identity: Option<Identity>,
    /// DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// Whether it has expired (or is not yet valid) on this machine's clock.
    pub valid_now: bool,
    pub is_ca: bool,
}

/// Reads every certificate of a PEM file.
pub fn inspect(path: &Path) -> Result<Vec<CertInfo>, TlsError> {
    let mut out = Vec::new();
    for der in certs(path, "the certificate")? {
        let (_, c) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| err(format!("{}: unreadable certificate: {e}", path.display())))?;
        let names = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                            4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                            16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(CertInfo {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            identity: Identity::of_certificate(&der),
            names,
            not_before: c.validity().not_before.to_string(),
            not_after: c.validity().not_after.to_string(),
            valid_now: validity(&der).is_ok(),
            is_ca: c.is_ca(),
        });
    }
    Ok(out)
}

/// A certificate's end of validity, or why it is not valid now.
fn validity(der: &CertificateDer<'_>) -> Result<SystemTime, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("unreadable certificate: {e}"))?;
    let v = cert.validity();
    let now = SystemTime::now();
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let (from, until) = (at(v.not_before.timestamp()), at(v.not_after.timestamp()));
    if now > until {
        return Err(format!("the certificate expired on {} (make a new one with `switchyard cert`)", v.not_after));
    }
    if now < from {
        return Err(format!("the certificate is not valid before {} (check this machine's clock)", v.not_before));
    }
    Ok(until)
}

impl ResolvesServerCert for Tls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().key.clone()
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("required", &self.required).finish()
    }
}

impl ResolvesClientCert for Tls {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current().key.clone()
    }

    fn has_certs(&self) -> bool {
        self.inner.own.is_some()
    }
}

/// Checks a client's certificate against the current CA.
struct Verifier {
    tls: Tls,
    required: bool,
}

impl Verifier {
    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        let m = self.tls.current();
        if self.required {
            m.clients_required.clone()
        } else {
            m.clients_optional.clone()
        }
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 4.2.4); our clients have one certificate each.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

impl ServerCertVerifier for Tls {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().servers.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().servers.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().servers.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().servers.supported_verify_schemes()
    }
}
