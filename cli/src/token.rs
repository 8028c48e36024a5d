//! `switchyard token`: bearer tokens and secrets made here, so that coordinators' configurations
//! hold only tokens' hashes. `token new` prints a fresh random token once, with the `[[tokens]]`
//! entry (its SHA-256) to add to every coordinator's configuration; `token hash` prints the
//! entry line of an existing token read from standard input. Add the entry, send the
//! coordinators SIGHUP (or restart them), and the token works; remove it and SIGHUP, and it
//! stops working: rotation needs no restart.

use std::io::Read as _;

use clap::{Subcommand, ValueEnum};
use switchyard_protocol::secret;
use switchyard_protocol::Name;

use crate::{CliError, Out};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Make a random token (or the cluster secret) and print it once, with its config entry.
    New {
        /// The role of the entry printed: admin, operations (migrate, abort, switching,
        /// maintenance), read-only or agent.
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
        /// The host of an agent token.
        #[arg(long, value_parser = crate::name)]
        host: Option<Name>,
        /// A name for the entry (the actor recorded with the changes it makes).
        #[arg(long)]
        name: Option<String>,
    },
    /// Read a token from standard input and print its `sha256 = ...` line.
    Hash,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Admin,
    Operations,
    /// `operator`, its earlier name, is still accepted.
    #[value(alias = "operator")]
    ReadOnly,
    Agent,
}

/// 256 random bits as 64 hex digits.
pub fn random_token() -> String {
    let (a, b) = (rand::random::<u128>(), rand::random::<u128>());
    format!("{a:032x}{b:032x}")
}

pub fn run(json: bool, verb: Verb) -> Out {
    match verb {
        Verb::New { role, host, name } => {
            if matches!(role, RoleArg::Agent) != host.is_some() {
                return Err(CliError::Usage("--host goes with --role agent, and an agent token needs it".into()));
            }
            let token = random_token();
            let hash = secret::token_hash(&token);
            // As the coordinator's configuration spells the role.
            let role = match role {
                RoleArg::Admin => "admin",
                RoleArg::Operations => "operations",
                RoleArg::ReadOnly => "read_only",
                RoleArg::Agent => "agent",
            };
            if json {
                let v = serde_json::json!({"token": token, "sha256": hash, "role": role, "host": host, "name": name});
                return Ok(format!("{v}\n"));
            }
            let mut entry = format!("[[tokens]]\nsha256 = \"{hash}\"\nrole = \"{role}\"\n");
            if let Some(h) = host {
                entry.push_str(&format!("host = \"{h}\"\n"));
            }
            if let Some(n) = name {
                entry.push_str(&format!("name = {}\n", serde_json::Value::String(n)));
            }
            Ok(format!(
                "token: {token}\n  (shown once: give it to its user; it also serves as a cluster_secret)\n\n\
                 Add to every coordinator's configuration, then send them SIGHUP:\n\n{entry}"
            ))
        }
        Verb::Hash => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| CliError::Usage(format!("read the token from standard input: {e}")))?;
            let token = input.trim();
            if token.is_empty() {
                return Err(CliError::Usage("no token on standard input".into()));
            }
            Ok(format!("sha256 = \"{}\"\n", secret::token_hash(token)))
        }
    }
}
