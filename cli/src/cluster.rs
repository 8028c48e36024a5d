//! `switchyard cluster status|init|add-node|remove-node`.

use clap::Subcommand;
use switchyard_protocol::api::{InitRequest, MemberSpec};

use crate::render::{cluster_table, to_json};
use crate::{CliError, Ctx, Out};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Every member: role, term, last log index, applied index, lag.
    Status,
    /// Bootstrap a new cluster on the contacted coordinator (alone, or with --member entries).
    Init {
        /// ID=RAFT_ADDR,API_ADDR of an initial member; repeat for each.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Leave the new cluster without an identity, for `switchyard log restore` to seed.
        #[arg(long)]
        for_restore: bool,
    },
    /// Add a coordinator: it joins as a learner, catches up, then becomes a voter.
    AddNode {
        /// The new coordinator's node id (its config's `node_id`).
        id: u64,
        /// Its Raft address, as peers reach it.
        #[arg(long)]
        raft_addr: String,
        /// Its API address, as clients and peers reach it.
        #[arg(long)]
        api_addr: String,
    },
    /// Remove a coordinator from the cluster.
    RemoveNode {
        /// The node id to remove.
        id: u64,
    },
}

pub(crate) fn parse_member(s: &str) -> Result<MemberSpec, CliError> {
    let bad = || CliError::Usage(format!("--member {s:?}: expected ID=RAFT_ADDR,API_ADDR"));
    let (id, addrs) = s.split_once('=').ok_or_else(bad)?;
    let (raft, api) = addrs.split_once(',').ok_or_else(bad)?;
    Ok(MemberSpec { id: id.parse().map_err(|_| bad())?, raft_addr: raft.into(), api_addr: api.into() })
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::Status => {
            let s = c.cluster_status().await?;
            Ok(if json { to_json(&s) } else { cluster_table(&s) })
        }
        Verb::Init { members, for_restore } => {
            let members = members.iter().map(|m| parse_member(m)).collect::<Result<Vec<_>, _>>()?;
            let r = c.init(&InitRequest { members, for_restore }).await?;
            Ok(if json {
                to_json(&r)
            } else if for_restore {
                "cluster initialized without an identity; seed it with `switchyard log restore FILE`\n".into()
            } else {
                format!("cluster {} initialized\n", r.cluster.map_or("?".into(), |c| c.to_string()))
            })
        }
        Verb::AddNode { id, raft_addr, api_addr } => {
            let r = c.add_node(&MemberSpec { id, raft_addr, api_addr }).await?;
            Ok(if json { to_json(&r) } else { format!("node {id} added as a voter\n") })
        }
        Verb::RemoveNode { id } => {
            let r = c.remove_node(id).await?;
            Ok(if json { to_json(&r) } else { format!("node {id} removed\n") })
        }
    }
}
