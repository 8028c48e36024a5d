//! The `console` part: how long the console's pages take at SPEC §8's scale (`--scale-hosts`
//! hosts, `--scale-guests` guests; 1 000 and 100 000 by default). Three coordinators seeded by
//! `log restore` with a synthetic history (hosts registered, then guests created, spread over the
//! hosts), a console session opened with the admin token, then each page read in turn, one
//! request at a time, from the leader and from a follower (which forwards its reads to the
//! leader). A page's time is from the request to the last byte of its HTML on loopback:
//! the server's time plus a loopback round trip. The goal: under 200 ms per page.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::scenarios::{synthetic_export, Synthetic};
use crate::sut::{RestoreBy, Sut, Switchyard, Timing};
use crate::{Args, Report};

/// Timed reads of each page (after a few untimed ones).
const READS: usize = 40;

pub async fn console(args: &Args, dir: &Path, timing: Timing, report: &mut Report) -> anyhow::Result<()> {
    let (hosts, guests) = (args.scale_hosts as u64, args.scale_guests as u64);
    eprintln!("== console pages at {hosts} hosts, {guests} guests");
    let file = dir.join("console.swylog");
    synthetic_export(&file, Synthetic { hosts, guests, events: hosts + guests })?;
    let (sw, _) = Switchyard::restored(&dir.join("console"), timing, args.batch_max, &file, RestoreBy::Seed).await?;
    let _ = std::fs::remove_file(&file);
    let sut = Sut::Switchyard(Box::new(sw));
    let (leader, leader_ep) = sut.leader().await?;
    let Sut::Switchyard(sw) = &sut else { unreachable!() };
    let follower = (1..=3u64).find(|m| *m != leader).expect("a follower");
    let follower_ep = sw.cluster.endpoint(follower);
    let client = sut.client(
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(60)),
    );
    let middle_host = format!("h{}", hosts / 2);
    let middle_guest = format!("g{}", guests / 2);
    let pages = [
        ("hosts, first page", "/ui/hosts".to_string()),
        ("hosts, from the middle", format!("/ui/hosts?after={middle_host}")),
        ("guests, first page", "/ui/guests".to_string()),
        ("guests, from the middle", format!("/ui/guests?after={middle_guest}")),
        ("guests of one host", "/ui/guests?owner=h7".to_string()),
        ("one host", "/ui/hosts/h7".to_string()),
        ("cluster", "/ui/cluster".to_string()),
        ("packages", "/ui/packages".to_string()),
        ("migrations", "/ui/migrations".to_string()),
        ("events", "/ui/events".to_string()),
    ];
    let shape = format!("{hosts} hosts, {guests} guests");
    for (who, ep) in [("leader", &leader_ep), ("follower", &follower_ep)] {
        let cookie = sign_in(&client, sw, ep).await?;
        for (page, path) in &pages {
            if who == "follower" && !page.starts_with("hosts, first") && !page.starts_with("guests, first") {
                continue;
            }
            let url = sw.url(ep, path);
            let mut times = Vec::with_capacity(READS);
            for i in 0..READS + 3 {
                let t = Instant::now();
                let r = client.get(&url).header("cookie", &cookie).send().await?;
                let status = r.status();
                let body = r.text().await?;
                let took = t.elapsed();
                if !status.is_success() || !body.contains("Read at revision") {
                    bail!("{url} answered {status}: {}", &body[..body.len().min(400)]);
                }
                if i >= 3 {
                    times.push(took);
                }
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let (p50, p99) = (ms(times[times.len() / 2]), ms(times[times.len() * 99 / 100]));
            eprintln!("  {page} ({who}): p50 {p50:.1} ms, p99 {p99:.1} ms");
            let figure = format!("console: {page}, from the {who}, at {shape} (p50)");
            report.add(&figure, "ms", false, "switchyard", p50);
            report.note(&figure, format!("p99 {p99:.1} ms over {READS} reads of {path}"));
        }
    }
    Ok(())
}

/// Opens a console session on `ep` with the admin token; answers the `Cookie` header to send.
async fn sign_in(client: &reqwest::Client, sw: &Switchyard, ep: &str) -> anyhow::Result<String> {
    let origin = sw.url(ep, "");
    let form = serde_urlencoded::to_string([("token", sw.token()), ("next", "/ui/cluster")])?;
    let r = client
        .post(sw.url(ep, "/ui/login"))
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .context("sign in to the console")?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    cookie.with_context(|| format!("the console's sign-in answered {} without a session", r.status()))
}
