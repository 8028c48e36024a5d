//! Who a certificate speaks for: a coordinator (its node id), a VM host's agent (its host name),
//! or a client (a person or tool). The identity is a URI in the certificate's subject
//! alternative names (`switchyard://node/1`, `switchyard://host/h1`, `switchyard://client/ops`),
//! so it can neither be confused with a DNS name nor be read from a forgeable field such as
//! the common name.

use std::fmt;

use rustls::pki_types::CertificateDer;
use switchyard_protocol::Name;
use x509_parser::extensions::GeneralName;

const PREFIX: &str = "switchyard://";

/// The identity a certificate of the cluster's CA carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A coordinator: may take part in Raft and forward requests for the clients it serves.
    Node(u64),
    /// A VM host's agent: may act for that host only.
    Host(Name),
    /// A person or tool using the API.
    Client(Name),
}

impl Identity {
    /// The URI written into a certificate.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{PREFIX}node/{id}"),
            Identity::Host(h) => format!("{PREFIX}host/{h}"),
            Identity::Client(c) => format!("{PREFIX}client/{c}"),
        }
    }

    /// Reads an identity URI (`None` for any other URI).
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(PREFIX)?;
        let (kind, value) = rest.split_once('/')?;
        match kind {
            "node" => value.parse().ok().filter(|id| *id > 0).map(Identity::Node),
            "host" => Name::new(value).ok().map(Identity::Host),
            "client" => Name::new(value).ok().map(Identity::Client),
            _ => None,
        }
    }

    /// The identity of a DER certificate: its one `switchyard://` URI. `None` when it has none,
    /// or more than one (a certificate that claims two identities speaks for neither).
    pub fn of_certificate(der: &CertificateDer<'_>) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(PREFIX) => Some(Identity::from_uri(u)),
            _ => None,
        });
        let first = found.next()??;
        found.next().is_none().then_some(first)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Host(h) => write!(f, "host {h}"),
            Identity::Client(c) => write!(f, "client {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_strangers_are_refused() {
        for id in
            [Identity::Node(3), Identity::Host(Name::new("h1").unwrap()), Identity::Client(Name::new("ops-1").unwrap())]
        {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for bad in [
            "switchyard://node/0",
            "switchyard://node/x",
            "switchyard://host/",
            "switchyard://host/a/b",
            "switchyard://admin/x",
            "https://host/h1",
            "switchyard:/host/h1",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }
}
