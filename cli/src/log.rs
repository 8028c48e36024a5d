//! `switchyard log export|verify|replay|restore|seed`: the recovery tooling (SPEC §7). It works when the
//! cluster does not: on a stopped coordinator's data directory or on an export file, with the
//! file format and checks in `switchyard_storage::export`. Export also works against the live
//! cluster, consistent at the revision it states.
//!
//! Long runs print progress on standard error when it is a terminal.

use std::collections::BTreeMap;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use switchyard_client::{Client, EventQuery};
use switchyard_protocol::api::{
    FullState, GuestView, HostView, IdentityRequest, IdentityResponse, ImportRequest, MigrationPage, Read, StreamItem,
};
use switchyard_protocol::entry::NodeInfo;
use switchyard_protocol::limits::IMPORT_EVENTS_MAX;
use switchyard_protocol::{ClusterState, Event, ImportProgress, RestoredFrom};
use switchyard_storage::export::{self, ExportHeader, ExportWriter, Format, Report, Until};
use switchyard_storage::seed::SeedError;

use crate::render::{guests_table, hosts_table, migrations_table, now, packages_table, to_json};
use crate::{timefmt, CliError, Ctx, Out};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Write the event history to a portable file: checksummed records, a running SHA-256
    /// chain, a trailer. From the live cluster (consistent at the revision it states) unless
    /// --data-dir names a stopped coordinator's data directory.
    Export {
        /// Where to write ("-": standard output).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// A stopped coordinator's data directory to export instead of the live cluster.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `binary` (default) or `jsonl` (JSON lines, for people and scripts).
        #[arg(long, default_value = "binary", value_parser = ["binary", "jsonl"])]
        format: String,
    },
    /// Check an export file or a data directory: checksums, contiguous revisions, the hash
    /// chain, and that replaying the events gives the stored state. Exit code 1 if not clean.
    Verify {
        /// An export file or a stopped coordinator's data directory.
        source: PathBuf,
    },
    /// Rebuild the state at a revision from the events alone and print it (or its digest, or
    /// its differences from the live cluster).
    Replay {
        /// An export file or a stopped coordinator's data directory.
        source: PathBuf,
        /// Stop at this revision.
        #[arg(long)]
        until: Option<u64>,
        /// Stop at this time: a UTC date[-time], epoch ms, or an age like 2h.
        #[arg(long)]
        until_time: Option<String>,
        /// Print only the state digest.
        #[arg(long)]
        digest: bool,
        /// Compare with the live cluster's state at its current revision.
        #[arg(long, conflicts_with_all = ["until", "until_time"])]
        diff: bool,
    },
    /// Seed a brand-new cluster from an export: checks the whole file first, imports its events
    /// (original revisions, times and actors) into a cluster started with `cluster init
    /// --for-restore`, then commits a new cluster id. Agents of the old cluster notice the new id
    /// and re-sync. Safe to run again after an interruption: it resumes where the import stopped.
    Restore {
        /// The export file.
        file: PathBuf,
    },
    /// Build a stopped member's data directory from an export, offline, at the speed of
    /// replay: run it on every member's machine with the same --member list, start the
    /// members (they elect a leader on their own: no `cluster init`), then `log restore FILE`
    /// checks that they all hold this export and commits the new cluster id. A member left
    /// unseeded, or added later, receives the seed from the leader as a snapshot.
    Seed {
        /// The export file.
        file: PathBuf,
        /// The member's data directory: absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The member's node id (its config's `node_id`).
        #[arg(long)]
        node_id: u64,
        /// ID=RAFT_ADDR,API_ADDR of a member of the new cluster; repeat for each (the same list
        /// on every member).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// ID=DIR: another member whose directory is on this machine, seeded from the same read
        /// of the export (its table files hard links to the first directory's); repeat for each.
        #[arg(long = "also", value_name = "ID=DIR")]
        also: Vec<String>,
    },
}

fn failed(why: impl std::fmt::Display) -> CliError {
    CliError::Failed(String::new(), why.to_string())
}

/// Progress of a long run on standard error when it is a terminal: a bar with rate and time
/// left when the total is known, a running count and rate otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(what: &'static str, unit: &'static str, total: Option<u64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let (bar, template) = match total.filter(|t| *t > 0) {
            Some(t) => (
                indicatif::ProgressBar::new(t),
                format!(
                    "{what} [{{bar:30}}] {{percent:>3}}% {{human_pos}}/{{human_len}} {unit}, {{per_sec}}, {{eta}} left"
                ),
            ),
            None => (indicatif::ProgressBar::new_spinner(), format!("{what}: {{human_pos}} {unit}, {{per_sec}}")),
        };
        let style = indicatif::ProgressStyle::with_template(&template).expect("a valid progress template");
        bar.set_style(style.progress_chars("#>."));
        Progress(Some(bar))
    }

    fn tick(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.set_position(n);
        }
    }

    fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::Export { file, data_dir, format } => export(c, json, &file, data_dir.as_deref(), format == "jsonl").await,
        Verb::Verify { source } => verify(json, &source),
        Verb::Replay { source, until, until_time, digest, diff } => {
            let until_time = until_time.map(|t| timefmt::parse(&t, now())).transpose().map_err(CliError::Usage)?;
            replay(c, json, &source, Until { revision: until, time: until_time }, digest, diff).await
        }
        Verb::Restore { file } => restore(c, json, &file).await,
        Verb::Seed { file, data_dir, node_id, members, also } => seed(json, &file, &data_dir, node_id, &members, &also),
    }
}

fn output(file: &Path) -> Result<Box<dyn Write>, CliError> {
    if file.as_os_str() == "-" {
        return Ok(Box::new(std::io::BufWriter::new(std::io::stdout())));
    }
    let f = std::fs::File::create(file).map_err(|e| failed(format!("create {}: {e}", file.display())))?;
    Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)))
}

async fn export(c: &Client, json: bool, file: &Path, data_dir: Option<&Path>, jsonl: bool) -> Out {
    let format = if jsonl { Format::JsonLines } else { Format::Binary };
    let now = now();
    let out = output(file)?;
    let mut progress = Progress::new("export", "events", None);
    let (header, n) = match data_dir {
        Some(dir) => export::export_data_dir(dir, out, format, now, |n| progress.tick(n)).map_err(failed)?,
        None => {
            // Consistent at one revision: read it (linearizably), then export up to it.
            let state = c.full_state().await?;
            let at = state.revision;
            progress = Progress::new("export", "events", Some(at));
            let cluster = state.items.cluster.map(|c| c.id);
            let mut first: Option<Event> = None;
            let mut writer: Option<ExportWriter<Box<dyn Write>>> = None;
            let mut out = Some(out);
            let mut error: Option<String> = None;
            let q = EventQuery { from: 1, follow: true, ..Default::default() };
            let source = "live cluster".to_string();
            let mut count = 0u64;
            if at > 0 {
                c.events(&q, |item| {
                    let e = match item {
                        StreamItem::Event(e) => e,
                        StreamItem::Progress { .. } => return true,
                        StreamItem::Compacted { first_retained, .. } => {
                            error = Some(format!(
                                "the cluster keeps history only from revision {first_retained}: export a data directory \
                                 (history retained there) or raise history.retain_revisions"
                            ));
                            return false;
                        }
                    };
                    if writer.is_none() {
                        let header = ExportHeader {
                            source: source.clone(),
                            cluster: cluster.clone(),
                            first_revision: e.revision,
                            last_revision: at,
                            exported_at: now,
                            format: switchyard_storage::export::EXPORT_FORMAT,
                        };
                        match ExportWriter::new(out.take().expect("one writer"), format, &header) {
                            Ok(w) => writer = Some(w),
                            Err(err) => {
                                error = Some(err.to_string());
                                return false;
                            }
                        }
                        first = Some((**e).clone());
                    }
                    if let Err(err) = writer.as_mut().expect("created").push(e) {
                        error = Some(err.to_string());
                        return false;
                    }
                    count += 1;
                    progress.tick(count);
                    e.revision < at
                })
                .await?;
            }
            if let Some(e) = error {
                return Err(failed(e));
            }
            let header = ExportHeader {
                source,
                cluster,
                first_revision: first.map_or(1, |e| e.revision),
                last_revision: at,
                exported_at: now,
                format: switchyard_storage::export::EXPORT_FORMAT,
            };
            let w = match writer {
                Some(w) => w,
                None => ExportWriter::new(out.take().expect("unused"), format, &header).map_err(failed)?,
            };
            let n = w.finish().map_err(failed)?;
            (header, n)
        }
    };
    progress.done();
    Ok(if json {
        to_json(&serde_json::json!({"file": file, "header": header, "events": n}))
    } else {
        format!(
            "exported {n} events (revisions {}..={}) from {} to {}\n",
            header.first_revision,
            header.last_revision,
            header.source,
            file.display()
        )
    })
}

/// Reads an export file or a data directory (told apart by what the path is).
fn read(source: &Path, until: Until) -> Result<(Report, Option<ClusterState>), CliError> {
    if source.is_dir() {
        let p = Progress::new("read", "events", None);
        let r = export::read_data_dir(source, until, |n| p.tick(n)).map_err(failed)?;
        p.done();
        Ok(r)
    } else {
        let f = std::fs::File::open(source).map_err(|e| failed(format!("open {}: {e}", source.display())))?;
        let size = f.metadata().map_or(0, |m| m.len() >> 20);
        let p = Progress::new("read", "MiB", Some(size));
        let r = export::read_export(BufReader::with_capacity(1 << 20, f), until, |b| p.tick(b >> 20))
            .map_err(|e| failed(format!("read {}: {e}", source.display())))?;
        p.done();
        Ok((r, None))
    }
}

fn verify(json: bool, source: &Path) -> Out {
    let (mut r, loaded) = read(source, Until::default())?;
    if let Some(loaded) = &loaded {
        if r.problems.is_empty() && r.first_revision.is_none_or(|f| f == 1) {
            let (a, b) = (FullState::of(&r.state), FullState::of(loaded));
            if a != b || r.state.revision() != loaded.revision() {
                r.problems.push(export::Problem {
                    location: format!("data directory {}", source.display()),
                    problem: format!(
                        "replaying the events gives state {} at revision {}, the stored state is {} at revision {}",
                        a.digest(),
                        r.state.revision(),
                        b.digest(),
                        loaded.revision()
                    ),
                });
            }
        }
    }
    // A digest only of a whole, sound history: anything else folded a partial state.
    let whole = r.first_revision.is_none_or(|f| f == 1);
    let digest = (whole && r.problems.is_empty()).then(|| FullState::of(&r.state).digest());
    let text = if json {
        to_json(&serde_json::json!({
            "clean": r.problems.is_empty(), "events": r.events, "first_revision": r.first_revision,
            "last_revision": r.last_revision, "header": r.header, "state_digest": digest, "problems": r.problems,
        }))
    } else {
        let mut s = format!(
            "{}: {} events, revisions {}..={}\n",
            source.display(),
            r.events,
            r.first_revision.map_or("-".into(), |f| f.to_string()),
            r.last_revision.map_or("-".into(), |l| l.to_string())
        );
        match &digest {
            Some(d) => s.push_str(&format!("state digest {d}\n")),
            None if !r.problems.is_empty() => s.push_str(&format!(
                "no state digest: the history has problems (events are folded only up to the first, revision {})\n",
                r.state.revision()
            )),
            None => s.push_str("no state digest: the history does not start at revision 1\n"),
        }
        for p in &r.problems {
            s.push_str(&format!("PROBLEM at {}: {}\n", p.location, p.problem));
        }
        s
    };
    if r.problems.is_empty() {
        Ok(if json { text } else { format!("{text}clean\n") })
    } else {
        Err(CliError::Failed(text, format!("{} problem(s) found in {}", r.problems.len(), source.display())))
    }
}

async fn replay(c: &Client, json: bool, source: &Path, until: Until, digest_only: bool, diff: bool) -> Out {
    let live: Option<Read<FullState>> = if diff { Some(c.full_state().await?) } else { None };
    let until = match &live {
        Some(l) => Until { revision: Some(l.revision), time: None },
        None => until,
    };
    let (r, _) = read(source, until)?;
    if let Some(p) = r.problems.first() {
        return Err(failed(format!(
            "{} is damaged ({} problem(s); first at {}: {}); run `switchyard log verify` for all of them",
            source.display(),
            r.problems.len(),
            p.location,
            p.problem
        )));
    }
    if r.first_revision.is_some_and(|f| f > 1) {
        return Err(failed(format!(
            "the history in {} starts at revision {}: state cannot be rebuilt from events alone",
            source.display(),
            r.first_revision.unwrap_or(0)
        )));
    }
    let state = FullState::of(&r.state);
    let revision = r.state.revision();
    let digest = state.digest();
    if let Some(live) = live {
        if revision < live.revision {
            return Err(failed(format!(
                "{} ends at revision {revision}, the cluster is at {}: export again to compare",
                source.display(),
                live.revision
            )));
        }
        let diffs = differences(&state, &live.items);
        let text = if json {
            to_json(&serde_json::json!({"revision": revision, "identical": diffs.is_empty(), "differences": diffs}))
        } else if diffs.is_empty() {
            format!("identical to the live cluster at revision {revision} (digest {digest})\n")
        } else {
            diffs.iter().map(|d| format!("DIFFERS {d}\n")).collect()
        };
        return if diffs.is_empty() {
            Ok(text)
        } else {
            Err(CliError::Failed(text, format!("{} difference(s) at revision {revision}", diffs.len())))
        };
    }
    if digest_only {
        return Ok(if json {
            to_json(&serde_json::json!({"revision": revision, "digest": digest}))
        } else {
            format!("{digest}\n")
        });
    }
    if json {
        return Ok(to_json(&serde_json::json!({"revision": revision, "digest": digest, "state": state})));
    }
    let hosts: Vec<HostView> = state
        .hosts
        .iter()
        .map(|h| HostView { host: h.clone(), state: h.state(), drain: None, sync: None, committed: Default::default() })
        .collect();
    let guests: Vec<GuestView> = state
        .guests
        .iter()
        .map(|g| GuestView {
            guest: g.clone(),
            package: g.spec.package.as_ref().and_then(|p| state.packages.iter().find(|x| &x.name == p)).cloned(),
            migration: state.migrations.iter().find(|m| m.guest == g.name).cloned(),
            failover: None,
            hosts: Vec::new(),
        })
        .collect();
    let page = MigrationPage { migrations: state.migrations.clone(), next_after: None };
    Ok(format!(
        "state at revision {revision} (digest {digest})\n\nHOSTS\n{}\nGUESTS\n{}\nPACKAGES\n{}\nMIGRATIONS IN FLIGHT\n{}",
        hosts_table(&hosts),
        guests_table(&guests),
        packages_table(&state.packages),
        migrations_table(&page)
    ))
}

/// What differs between two configurations, by name.
fn differences(replayed: &FullState, live: &FullState) -> Vec<String> {
    fn by_name<T: PartialEq>(what: &str, a: &[T], b: &[T], name: impl Fn(&T) -> String) -> Vec<String> {
        let mut out = Vec::new();
        for x in a {
            match b.iter().find(|y| name(y) == name(x)) {
                None => out.push(format!("{what} {}: in the replay only", name(x))),
                Some(y) if y != x => out.push(format!("{what} {}: differs", name(x))),
                _ => {}
            }
        }
        for y in b {
            if !a.iter().any(|x| name(x) == name(y)) {
                out.push(format!("{what} {}: in the live cluster only", name(y)));
            }
        }
        out
    }
    let mut d = by_name("host", &replayed.hosts, &live.hosts, |h| h.spec.name.to_string());
    d.extend(by_name("guest", &replayed.guests, &live.guests, |g| g.name.to_string()));
    d.extend(by_name("package", &replayed.packages, &live.packages, |p| p.name.to_string()));
    d.extend(by_name("migration", &replayed.migrations, &live.migrations, |m| m.id.to_string()));
    d
}

/// `log seed FILE --data-dir DIR --node-id N --member … [--also ID=DIR …]`: builds members'
/// directories offline (`switchyard_storage::seed`).
fn seed(json: bool, file: &Path, data_dir: &Path, node_id: u64, members: &[String], also: &[String]) -> Out {
    let members = members
        .iter()
        .map(|m| {
            crate::cluster::parse_member(m).map(|m| (m.id, NodeInfo { raft_addr: m.raft_addr, api_addr: m.api_addr }))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let mut targets = vec![(node_id, data_dir.to_path_buf())];
    for a in also {
        let parsed = a.split_once('=').and_then(|(id, dir)| Some((id.trim().parse::<u64>().ok()?, dir)));
        match parsed {
            Some((id, dir)) if !dir.is_empty() => targets.push((id, PathBuf::from(dir))),
            _ => {
                return Err(CliError::Usage(format!(
                    "--also {a:?}: expected ID=DIR, e.g. --also 2=/var/lib/switchyard-2"
                )))
            }
        }
    }
    if file.is_dir() {
        return Err(CliError::Usage(format!("{} is a directory: seed takes an export file", file.display())));
    }
    let f = std::fs::File::open(file).map_err(|e| failed(format!("open {}: {e}", file.display())))?;
    let size = f.metadata().map_or(0, |m| m.len() >> 20);
    let p = Progress::new("seed", "MiB", Some(size));
    let started = std::time::Instant::now();
    let seeded =
        switchyard_storage::seed::seed(&targets, members, BufReader::with_capacity(1 << 20, f), |b| p.tick(b >> 20));
    p.done();
    let seeded = match seeded {
        Ok(s) => s,
        Err(SeedError::Damaged(problems)) => {
            let text: String = problems.iter().map(|p| format!("PROBLEM at {}: {}\n", p.location, p.problem)).collect();
            return Err(CliError::Failed(text, format!("{} is damaged: nothing was seeded", file.display())));
        }
        Err(e) => return Err(failed(e)),
    };
    let took = started.elapsed();
    let digest = FullState::of(&seeded.state).digest();
    Ok(if json {
        let seeded_dirs: Vec<_> =
            targets.iter().map(|(id, dir)| serde_json::json!({"node_id": id, "data_dir": dir})).collect();
        to_json(&serde_json::json!({
            "data_dir": data_dir, "node_id": node_id, "seeded": seeded_dirs, "cluster": seeded.header.cluster,
            "revision": seeded.revision, "chain": seeded.chain, "digest": digest, "ms": took.as_millis() as u64,
        }))
    } else {
        let whose: Vec<String> =
            targets.iter().map(|(id, dir)| format!("node {id}'s data directory {}", dir.display())).collect();
        format!(
            "seeded {} with revisions 1..={} of {} (cluster {}) in {:.1} s\n\
             configuration digest {digest}, chain {}\n\
             next: start every member, then `switchyard log restore {}` commits the new cluster id\n",
            whose.join(", "),
            seeded.revision,
            file.display(),
            seeded.header.cluster.as_ref().map_or("without id".into(), |c| c.to_string()),
            took.as_secs_f64(),
            seeded.chain,
            file.display(),
        )
    })
}

/// Largest JSON body of one import chunk; the coordinators accept up to 4 MiB there.
const IMPORT_CHUNK_BYTES: usize = 1 << 20;

/// `log restore FILE`: seeds a cluster started with `cluster init --for-restore` from an export.
///
/// The whole file is read and checked first; a damaged export is refused before anything is
/// sent. The events then go in chunks that the state machine checks again (contiguity, every
/// event foldable, invariants after each chunk), and the restore ends with a new cluster id
/// committed right after the last imported revision. Interrupted, it resumes from the revision
/// the cluster says it has imported, after checking that the hash chain there is this file's.
async fn restore(c: &Client, json: bool, file: &Path) -> Out {
    if file.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is a directory: restore takes an export file (`switchyard log export --data-dir {} -f FILE` makes one)",
            file.display(),
            file.display()
        )));
    }
    // Members that already hold the whole export (seeded, or an import that ended before the
    // identity was committed) need only the identity: the file's two ends say so, unread.
    let ends = export::read_ends(file).map_err(|e| failed(format!("read {}: {e}", file.display())))?;
    if let Some(ends) = ends.filter(|e| e.header.first_revision == 1) {
        let view = c.identity().await?;
        if let Some(p) = view.items.importing.as_ref().filter(|p| p.through_revision == ends.last_revision) {
            if p.cluster != ends.header.cluster || p.chain != ends.chain {
                return Err(failed(format!(
                    "the cluster holds another history through revision {} (chain {}): it was seeded or restored from another export than {}",
                    p.through_revision,
                    p.chain,
                    file.display()
                )));
            }
            return restore_held(c, json, file, &ends).await;
        }
    }
    let (report, _) = read(file, Until::default())?;
    if !report.problems.is_empty() {
        let text: String =
            report.problems.iter().map(|p| format!("PROBLEM at {}: {}\n", p.location, p.problem)).collect();
        return Err(CliError::Failed(text, format!("{} is damaged: nothing was restored", file.display())));
    }
    let header = report.header.clone().expect("a clean export has a header");
    if header.first_revision != 1 {
        return Err(failed(format!(
            "the export starts at revision {}: a cluster can only be seeded from a whole history (revision 1 on)",
            header.first_revision
        )));
    }
    let Some(last) = report.last_revision else {
        return Err(failed("the export holds no events: there is nothing to restore"));
    };
    let view = c.identity().await?;
    let start = match (&view.items.importing, &view.items.identity) {
        (Some(p), _) if p.cluster != header.cluster => {
            return Err(failed(format!(
            "this cluster is being restored from another export (cluster {:?}); start again on empty data directories",
            p.cluster.as_ref().map(|c| c.to_string())
        )))
        }
        (Some(p), _) => p.through_revision + 1,
        (None, Some(id)) => {
            return Err(failed(format!(
                "the cluster already has identity {}: restore seeds a brand-new cluster (empty data directories, \
                 `switchyard cluster init --for-restore`)",
                id.id
            )))
        }
        (None, None) if view.revision > 0 => {
            return Err(failed(format!(
                "the cluster already holds {} events: restore seeds a brand-new cluster (empty data directories, \
                 `switchyard cluster init --for-restore`)",
                view.revision
            )))
        }
        (None, None) => 1,
    };
    let resume_chain = view.items.importing.as_ref().map(|p| (p.through_revision, p.chain.clone()));

    // Read the file again on a blocking thread, feeding chunks to this task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Event, String)>(4 * IMPORT_EVENTS_MAX);
    let path = file.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || -> Result<(export::Report, String), String> {
        let f = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut resumed_ok = resume_chain.is_none();
        let mut gone = false;
        let mut last_chain = String::new();
        let r = export::read_export_with(
            BufReader::with_capacity(1 << 20, f),
            Until::default(),
            |_| {},
            |rec, _| {
                let e = rec.event;
                // Hex digits whenever the chain holds; a read with a broken chain imports nothing.
                let chain = String::from_utf8_lossy(rec.chain);
                if let Some((at, want)) = &resume_chain {
                    if e.revision == *at {
                        resumed_ok = chain.as_ref() == want.as_str();
                    }
                }
                last_chain = chain.to_string();
                if e.revision >= start && !gone && tx.blocking_send((e.clone(), chain.to_string())).is_err() {
                    gone = true;
                }
            },
        )
        .map_err(|e| format!("read {}: {e}", path.display()))?;
        if !resumed_ok {
            return Err(
                "the cluster's import so far does not match this file's hash chain: it was seeded from another export"
                    .into(),
            );
        }
        Ok((r, last_chain))
    });
    let progress = Progress::new("restore", "events imported", Some(last + 1 - start.min(last + 1)));
    let mut chunk: Vec<Event> = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut chain = String::new();
    let mut imported = 0u64;
    while let Some((e, ch)) = rx.recv().await {
        let n = serde_json::to_vec(&e).map_or(0, |v| v.len());
        if !chunk.is_empty() && (chunk.len() >= IMPORT_EVENTS_MAX || chunk_bytes + n > IMPORT_CHUNK_BYTES) {
            imported += import_chunk(c, &header.cluster, &chain, std::mem::take(&mut chunk)).await?;
            progress.tick(imported);
            chunk_bytes = 0;
        }
        chunk_bytes += n;
        chain = ch;
        chunk.push(e);
    }
    if !chunk.is_empty() {
        imported += import_chunk(c, &header.cluster, &chain, chunk).await?;
    }
    progress.done();
    let (second, last_chain) = reader.await.map_err(|e| failed(format!("reading the export: {e}")))?.map_err(failed)?;
    if !second.problems.is_empty() || second.last_revision != Some(last) {
        return Err(failed(format!(
            "{} changed while it was being restored; the cluster holds a partial import: run the restore again",
            file.display()
        )));
    }
    let answer = commit_restored_identity(
        c,
        RestoredFrom {
            cluster: header.cluster.clone(),
            through_revision: last,
            chain: last_chain,
            // Terms only grow along a history, so the last event's is the largest.
            term_base: report.state.last_term(),
        },
    )
    .await?;
    // What the cluster now holds must be what the export holds (the identity aside).
    let live = c.full_state().await?;
    let mut want = FullState::of(&report.state);
    let mut have = live.items.clone();
    want.cluster = None;
    have.cluster = None;
    let same = want == have;
    let cluster = live.items.cluster.as_ref().map(|c| c.id.to_string()).unwrap_or_default();
    let text = if json {
        to_json(&serde_json::json!({
            "cluster": cluster, "restored_from": header.cluster, "through_revision": last,
            "imported": imported, "revision": live.revision, "identity": answer, "configuration_matches": same,
        }))
    } else {
        format!(
            "restored {last} revisions from {} (cluster {}) into cluster {cluster}\n\
             the new cluster's own history starts at revision {}\n\
             configuration {} the export's (digest {})\n",
            file.display(),
            header.cluster.as_ref().map_or("without id".into(), |c| c.to_string()),
            last + 1,
            if same { "matches" } else { "DIFFERS FROM" },
            have.digest()
        )
    };
    if same {
        Ok(text)
    } else {
        Err(CliError::Failed(text, "the restored configuration differs from the export's".into()))
    }
}

/// The end of `log restore` when the cluster already holds the export's whole history (its
/// import progress is at the file's last revision with the file's chain): every member must hold
/// that same progress — a member seeded from another export, or not caught up yet, would apply
/// the identity differently — then the new identity is committed.
async fn restore_held(c: &Client, json: bool, file: &Path, ends: &export::Ends) -> Out {
    let want = ImportProgress {
        cluster: ends.header.cluster.clone(),
        through_revision: ends.last_revision,
        chain: ends.chain.clone(),
    };
    let Some(last_event) = ends.last_event.as_ref().filter(|e| e.revision == ends.last_revision) else {
        return Err(failed(format!("{} has no readable last event before its trailer", file.display())));
    };
    // A member installing the seed from the leader gets there within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = c.cluster_status().await?;
        let behind: Vec<String> = status
            .members
            .iter()
            .filter(|m| m.status.as_ref().and_then(|s| s.importing.as_ref()) != Some(&want))
            .map(|m| match m.status.as_ref() {
                None => format!("node {} does not answer", m.id),
                Some(s) => match &s.importing {
                    None => format!("node {} holds no restore (revision {})", m.id, s.revision),
                    Some(p) => format!("node {} holds revision {} with chain {}", m.id, p.through_revision, p.chain),
                },
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(failed(format!(
                "not every member holds {} through revision {}: {}; seed every member from the same export",
                file.display(),
                ends.last_revision,
                behind.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = commit_restored_identity(
        c,
        RestoredFrom {
            cluster: ends.header.cluster.clone(),
            through_revision: ends.last_revision,
            chain: ends.chain.clone(),
            term_base: last_event.term,
        },
    )
    .await?;
    // The answer names the new cluster; it is read back only when an earlier run committed it
    // (the answer of a repeated commit names no revision). The state itself is not read back:
    // every member's import progress already matched the export's last revision and chain (a
    // state of 100 000 guests is tens of MiB of JSON).
    let (cluster, revision) = match (&answer.cluster, answer.revision) {
        (Some(id), Some(revision)) => (id.to_string(), revision),
        _ => {
            let identity = c.identity().await?.items.identity;
            identity.map(|i| (i.id.to_string(), i.revision)).unwrap_or_default()
        }
    };
    let last = ends.last_revision;
    Ok(if json {
        to_json(&serde_json::json!({
            "cluster": cluster, "restored_from": ends.header.cluster, "through_revision": last,
            "imported": 0, "revision": revision, "identity": answer, "every_member_held_the_export": true,
        }))
    } else {
        format!(
            "every member holds revisions 1..={last} of {} (cluster {}, chain {}): committed the new cluster {cluster}\n\
             the new cluster's own history starts at revision {}\n",
            file.display(),
            ends.header.cluster.as_ref().map_or("without id".into(), |c| c.to_string()),
            ends.chain,
            last + 1,
        )
    })
}

/// Commits a restored cluster's new identity, stating the history it was restored from (the
/// last step of both ways of `log restore`).
async fn commit_restored_identity(
    c: &Client,
    restored_from: RestoredFrom,
) -> Result<IdentityResponse, switchyard_client::ClientError> {
    let req = IdentityRequest {
        request_id: Some(switchyard_client::new_request_id()),
        cluster: None,
        restored_from: Some(restored_from),
    };
    c.commit_identity(&req).await
}

/// Sends one chunk (`chain`: the export's chain after its last event). After a failure, the
/// cluster's import progress says whether the chunk landed anyway (a lost answer).
async fn import_chunk(
    c: &Client,
    cluster: &Option<switchyard_protocol::ClusterId>,
    chain: &str,
    events: Vec<Event>,
) -> Result<u64, CliError> {
    let (first, last, n) = (events[0].revision, events[events.len() - 1].revision, events.len() as u64);
    let req = ImportRequest {
        request_id: Some(switchyard_client::new_request_id()),
        cluster: cluster.clone(),
        chain: chain.to_string(),
        events,
    };
    let mut tries = 0;
    loop {
        let err = match c.import(&req).await {
            Ok(_) => return Ok(n),
            Err(e) => e,
        };
        let landed = match c.identity().await {
            Ok(v) => v.items.importing.is_some_and(|p| p.through_revision >= last),
            Err(_) => false,
        };
        if landed {
            return Ok(n);
        }
        let retry = matches!(err.code(), None | Some("unavailable") | Some("not_leader"));
        tries += 1;
        if !retry || tries >= 20 {
            return Err(failed(format!("the cluster did not take revisions {first}..={last}: {err}")));
        }
        tokio::time::sleep(Duration::from_millis(250 * tries)).await;
    }
}
