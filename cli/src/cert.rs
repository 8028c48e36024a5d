//! `switchyard cert`: the cluster's certificate authority on the operator's machine.
//!
//! `cert ca` makes the CA once; `cert node ID`, `cert host NAME` and `cert client NAME` make a
//! coordinator's, an agent's and a person's or tool's certificate, signed by it, each naming
//! its identity (see `switchyard_tls::Identity`). Files go to one folder (`--dir`, default
//! `./certs`): `ca.pem`, `ca.key`, `node-1.pem`, `node-1.key`, ... Keys are written mode 0600.
//! Replacing a certificate is making it again: a running coordinator or agent picks the new
//! files up within a second, without a restart. Keep `ca.key` offline once the certificates
//! are made.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use switchyard_protocol::Name;
use switchyard_tls::issue::{self, Validity};
use switchyard_tls::Identity;

use crate::{CliError, Out};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Make the cluster's CA (refused when the folder has one, unless --force).
    Ca {
        #[command(flatten)]
        common: Common,
        /// Replace an existing CA: every certificate it signed stops being accepted.
        #[arg(long)]
        force: bool,
    },
    /// A coordinator's certificate (server and client), for node ID.
    Node {
        id: u64,
        #[command(flatten)]
        common: Common,
        /// Further DNS names or IP addresses peers and clients reach it by, comma separated
        /// (localhost, 127.0.0.1 and ::1 are always in).
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
    },
    /// A VM host's agent certificate: it acts for that host only, and serves the agent's
    /// metrics.
    Host {
        #[arg(value_parser = crate::name)]
        name: Name,
        #[command(flatten)]
        common: Common,
        /// DNS names or IP addresses scrapers reach the agent's metrics by, comma separated
        /// (localhost, 127.0.0.1 and ::1 are always in).
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
    },
    /// A person's or tool's client certificate.
    Client {
        #[arg(value_parser = crate::name)]
        name: Name,
        #[command(flatten)]
        common: Common,
    },
    /// Show what a certificate file says: identity, names, validity, issuer.
    Show { file: PathBuf },
}

#[derive(Args, Debug)]
pub struct Common {
    /// The folder of the CA and the certificates.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Days the certificate is valid (default: 365; a CA: 3650).
    #[arg(long)]
    days: Option<u64>,
}

/// Runs a `cert` verb (no cluster needed).
pub fn run(json: bool, verb: Verb) -> Out {
    match verb {
        Verb::Ca { common, force } => {
            let (cert, _) = issue::paths(&common.dir, issue::CA_STEM);
            if cert.exists() && !force {
                return Err(CliError::Usage(format!(
                    "{} exists: the cluster's CA is made once (--force replaces it, and every certificate it signed \
                     stops being accepted)",
                    cert.display()
                )));
            }
            let name = format!("Switchyard cluster CA {:08x}", rand::random::<u32>());
            let pair = issue::new_ca(&name, Validity::days(common.days.unwrap_or(issue::CA_DAYS))).map_err(failed)?;
            let (c, k) = issue::write(&common.dir, issue::CA_STEM, &pair).map_err(failed)?;
            Ok(made(json, "CA", &c, &k))
        }
        Verb::Node { id, common, names } => {
            if id == 0 {
                return Err(CliError::Usage("node ids start at 1".into()));
            }
            make(json, &common, &Identity::Node(id), &names)
        }
        Verb::Host { name, common, names } => make(json, &common, &Identity::Host(name), &names),
        Verb::Client { name, common } => make(json, &common, &Identity::Client(name), &[]),
        Verb::Show { file } => show(json, &file),
    }
}

fn failed(e: switchyard_tls::TlsError) -> CliError {
    CliError::Failed(String::new(), e.to_string())
}

fn make(json: bool, common: &Common, identity: &Identity, names: &[String]) -> Out {
    let ca = issue::read(&common.dir, issue::CA_STEM).map_err(|e| {
        CliError::Usage(format!("{e} (make the CA first: switchyard cert ca --dir {})", common.dir.display()))
    })?;
    let validity = Validity::days(common.days.unwrap_or(issue::DEFAULT_DAYS));
    let pair = issue::issue(&ca, identity, names, validity).map_err(failed)?;
    let (c, k) = issue::write(&common.dir, &issue::stem(identity), &pair).map_err(failed)?;
    Ok(made(json, &identity.to_string(), &c, &k))
}

fn made(json: bool, what: &str, cert: &Path, key: &Path) -> String {
    if json {
        let v = serde_json::json!({ "made": what, "cert": cert, "key": key });
        return format!("{v}\n");
    }
    format!("made the certificate of {what}: {} (key {}, readable by you only)\n", cert.display(), key.display())
}

fn show(json: bool, file: &Path) -> Out {
    let infos = switchyard_tls::inspect(file).map_err(|e| CliError::Usage(e.to_string()))?;
    if json {
        let v: Vec<_> = infos
            .iter()
            .map(|i| {
                serde_json::json!({
                    "subject": i.subject, "issuer": i.issuer,
                    "identity": i.identity.as_ref().map(|x| x.uri()),
                    "names": i.names, "not_before": i.not_before, "not_after": i.not_after,
                    "valid_now": i.valid_now, "is_ca": i.is_ca,
                })
            })
            .collect();
        return Ok(format!("{}\n", serde_json::Value::Array(v)));
    }
    let mut out = String::new();
    for i in infos {
        let identity = i.identity.map_or("-".to_string(), |x| format!("{x} ({})", x.uri()));
        out.push_str(&format!(
            "subject:    {}\nissuer:     {}\nidentity:   {identity}\nnames:      {}\nvalid:      {} to {}{}\nca:         {}\n",
            i.subject,
            i.issuer,
            if i.names.is_empty() { "-".to_string() } else { i.names.join(", ") },
            i.not_before,
            i.not_after,
            if i.valid_now { "" } else { "  (NOT VALID NOW)" },
            if i.is_ca { "yes" } else { "no" },
        ));
    }
    Ok(out)
}
