//! The cluster's certificate authority: what `switchyard cert` and test clusters make.
//!
//! One CA per cluster signs three kinds of certificates, each naming its [`Identity`]:
//! coordinators (server and client: they serve the API and Raft and call each other), agents
//! and clients (client only). Keys are ECDSA P-256. Private keys are written readable by their
//! owner only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Identity, TlsError};

/// How long certificates are valid unless asked otherwise.
pub const DEFAULT_DAYS: u64 = 365;
/// How long a CA is valid unless asked otherwise.
pub const CA_DAYS: u64 = 10 * 365;

/// A certificate and its private key, PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days`.
    pub fn days(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity { not_before: now - Duration::from_secs(3600), not_after: now + Duration::from_secs(days * 86_400) }
    }
}

fn e(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |x| TlsError(format!("{what}: {x}"))
}

fn base(validity: Validity, cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.not_before = validity.not_before.into();
    p.not_after = validity.not_after.into();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Switchyard");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p
}

/// A new CA named `name`.
pub fn new_ca(name: &str, validity: Validity) -> Result<Pair, TlsError> {
    let key = KeyPair::generate().map_err(e("make the CA key"))?;
    let mut p = base(validity, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).map_err(e("sign the CA certificate"))?;
    Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
}

/// A certificate for `identity`, signed by the CA `ca`. Coordinators' and hosts' certificates
/// are also server certificates (the coordinators' API and Raft, an agent's metrics) and name
/// `names` (DNS names or IP addresses clients, peers and scrapers reach them by) besides
/// localhost.
pub fn issue(ca: &Pair, identity: &Identity, names: &[String], validity: Validity) -> Result<Pair, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(e("read the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(e("read the CA certificate"))?;
    let key = KeyPair::generate().map_err(e("make a key"))?;
    let mut p = base(validity, &identity.to_string());
    let uri = identity.uri().try_into().map_err(e("identity URI"))?;
    p.subject_alt_names.push(SanType::URI(uri));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Identity::Node(_) | Identity::Host(_) = identity {
        p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        all.extend(names.iter().cloned());
        all.dedup();
        for n in all {
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(e(&format!("name {n:?}")))?),
            };
            if !p.subject_alt_names.contains(&san) {
                p.subject_alt_names.push(san);
            }
        }
    }
    let cert = p.signed_by(&key, &issuer).map_err(e("sign the certificate"))?;
    Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
}

/// The file stem of an identity's pair: `node-1`, `host-h1`, `client-ops`; the CA's is `ca`.
pub fn stem(identity: &Identity) -> String {
    match identity {
        Identity::Node(id) => format!("node-{id}"),
        Identity::Host(h) => format!("host-{h}"),
        Identity::Client(c) => format!("client-{c}"),
    }
}

/// The CA's file stem.
pub const CA_STEM: &str = "ca";

/// The files of a pair: `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")))
}

/// Writes a pair as `<dir>/<stem>.pem` and `<dir>/<stem>.key` (mode 0600), replacing them
/// atomically (a reloading reader never sees half a file); answers the two paths.
pub fn write(dir: &Path, stem: &str, pair: &Pair) -> Result<(PathBuf, PathBuf), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(|x| TlsError(format!("create {}: {x}", dir.display())))?;
    let (cert, key) = paths(dir, stem);
    for (path, text, mode) in [(&key, &pair.key, 0o600), (&cert, &pair.cert, 0o644)] {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|x| TlsError(format!("write {}: {x}", path.display())))?;
    }
    Ok((cert, key))
}

/// Reads a pair written by [`write`].
pub fn read(dir: &Path, stem: &str) -> Result<Pair, TlsError> {
    let (cert, key) = paths(dir, stem);
    let r = |p: &Path| std::fs::read_to_string(p).map_err(|x| TlsError(format!("read {}: {x}", p.display())));
    Ok(Pair { cert: r(&cert)?, key: r(&key)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tls, TlsConfig};
    use switchyard_protocol::Name;

    #[test]
    fn issued_certificates_load_with_their_identity_and_fail_clearly_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("test CA", Validity::days(1)).unwrap();
        let (ca_path, _) = write(dir.path(), "ca", &ca).unwrap();
        let h1 = Identity::Host(Name::new("h1").unwrap());
        let (cert, key) = write(dir.path(), "host-h1", &issue(&ca, &h1, &[], Validity::days(1)).unwrap()).unwrap();
        let config = TlsConfig::files(&ca_path, &cert, &key);
        let tls = Tls::load(&config, Some(h1.clone())).unwrap();
        assert_eq!(tls.identity(), Some(h1));

        // Another identity expected: refused, naming both.
        let h2 = Identity::Host(Name::new("h2").unwrap());
        let e = Tls::load(&config, Some(h2)).unwrap_err().to_string();
        assert!(e.contains("host h1") && e.contains("host h2"), "{e}");

        // Signed by another CA: refused.
        let other = new_ca("other CA", Validity::days(1)).unwrap();
        let (other_path, _) = write(dir.path(), "other", &other).unwrap();
        let e = Tls::load(&TlsConfig::files(&other_path, &cert, &key), None).unwrap_err().to_string();
        assert!(e.contains("cannot be used with the CA"), "{e}");

        // Expired: refused with the date.
        let past = Validity {
            not_before: SystemTime::now() - Duration::from_secs(7200),
            not_after: SystemTime::now() - Duration::from_secs(3600),
        };
        let node = Identity::Node(1);
        let (c, k) = write(dir.path(), "old", &issue(&ca, &node, &[], past).unwrap()).unwrap();
        let e = Tls::load(&TlsConfig::files(&ca_path, &c, &k), None).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");

        // A key that is not the certificate's: refused.
        let (_, other_key) =
            write(dir.path(), "n2", &issue(&ca, &Identity::Node(2), &[], Validity::days(1)).unwrap()).unwrap();
        let e = Tls::load(&TlsConfig::files(&ca_path, &cert, &other_key), None).unwrap_err().to_string();
        assert!(e.contains("is not the key of"), "{e}");

        // Garbage: refused, not a panic.
        std::fs::write(dir.path().join("junk.pem"), b"not pem at all").unwrap();
        let e = Tls::load(&TlsConfig::files(&dir.path().join("junk.pem"), &cert, &key), None).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
