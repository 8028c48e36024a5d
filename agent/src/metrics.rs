//! The agent's own metrics (Prometheus/OpenMetrics text, `prometheus-client`) and the small
//! listener that serves them (`[metrics] listen`).
//!
//! The coordinators already see each host from its reports (applied revision, lag, in sync);
//! what only the agent knows is how it gets there: how far behind the stream it is, how many
//! events it applied and re-syncs it needed, what its reconciler did to the hypervisor and how
//! that went, how long each driver call took (a hypervisor tool that slows down shows here
//! before a migration times out), whether its reports reach the leader and its lease holds.
//!
//! The listener is hand-written rather than an HTTP framework: it answers `GET /metrics` and
//! `GET /healthz`, one request per connection, with bounded reads, a deadline and a bound on
//! open connections. It speaks TLS with the host's certificate whenever the agent has TLS
//! (scrapers verify it against the cluster's CA); the metrics hold no secret, so no client
//! certificate is asked for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use switchyard_protocol::api::METRICS_CONTENT_TYPE;
use switchyard_tls::Tls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The `[metrics]` section of the agent configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/healthz` are served (e.g. `"0.0.0.0:9464"`; a loopback address
    /// keeps them on the host).
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

fn call_time() -> Histogram {
    // 100 µs .. ~14 min: a QMP query to a whole live migration.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 24))
}

/// Every metric of one agent.
pub struct Metrics {
    registry: Registry,
    /// The revision whose events are applied here and on disk.
    pub applied_revision: Gauge,
    /// The highest revision the coordinators have announced to this agent.
    pub stream_revision: Gauge,
    /// `stream_revision - applied_revision`.
    pub lag: Gauge,
    pub events_applied: Counter,
    pub resyncs: Family<ReasonLabel, Counter>,
    pub subscribed: Gauge,
    pub reports: Family<OutcomeLabel, Counter>,
    pub lease_held: Gauge,
    pub actions: Family<ActionLabels, Counter>,
    pub repairs: Counter,
    pub drift_guests: Gauge,
    pub pending_guests: Gauge,
    pub driver_calls: Family<CallLabels, Histogram, fn() -> Histogram>,
    pub migration_reports: Family<OutcomeLabel, Counter>,
    pub watchdog_armed: Gauge,
    /// 1 while the data directory refuses writes (full, read-only or failing).
    pub store_failed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("switchyard_agent");
        let m = Metrics {
            registry: Registry::default(),
            applied_revision: Gauge::default(),
            stream_revision: Gauge::default(),
            lag: Gauge::default(),
            events_applied: Counter::default(),
            resyncs: Family::default(),
            subscribed: Gauge::default(),
            reports: Family::default(),
            lease_held: Gauge::default(),
            actions: Family::default(),
            repairs: Counter::default(),
            drift_guests: Gauge::default(),
            pending_guests: Gauge::default(),
            driver_calls: Family::new_with_constructor(call_time as fn() -> Histogram),
            migration_reports: Family::default(),
            watchdog_armed: Gauge::default(),
            store_failed: Gauge::default(),
        };
        r.register(
            "applied_revision",
            "Revision up to which this host's guest configuration is applied and on disk",
            m.applied_revision.clone(),
        );
        r.register(
            "stream_revision",
            "Highest revision the coordinators announced to this agent",
            m.stream_revision.clone(),
        );
        r.register("apply_lag_revisions", "How far the applied revision is behind the announced one", m.lag.clone());
        r.register("events_applied", "Events applied from the stream", m.events_applied.clone());
        r.register("resyncs", "Re-syncs from the coordinators' full state, by reason", m.resyncs.clone());
        r.register("subscribed", "1 while the event subscription is open", m.subscribed.clone());
        r.register("reports", "Reports to the leader, by outcome (ok, failed)", m.reports.clone());
        r.register("lease_held", "1 while this host's lease holds (0: packaged guests fenced)", m.lease_held.clone());
        r.register(
            "reconcile_actions",
            "Actions the reconciler took on the hypervisor, by action and outcome",
            m.actions.clone(),
        );
        r.register("repairs", "Drift from the log repaired on the hypervisor", m.repairs.clone());
        r.register("drift_guests", "Guests that differ from the log at the last reading", m.drift_guests.clone());
        r.register("pending_guests", "Guests with changes waiting for their next start", m.pending_guests.clone());
        r.register_with_unit(
            "driver_call",
            "Duration of hypervisor driver calls, by call and outcome",
            Unit::Seconds,
            m.driver_calls.clone(),
        );
        r.register(
            "migration_reports",
            "This host's part in migrations, as reported to the leader and acknowledged, by outcome \
             (transfer_done, transfer_failed, guest_running)",
            m.migration_reports.clone(),
        );
        r.register("watchdog_armed", "1 while the host watchdog is armed", m.watchdog_armed.clone());
        r.register(
            "store_failed",
            "1 while the agent's data directory refuses writes (full, read-only or failing); applying waits for it",
            m.store_failed.clone(),
        );
        for o in ["ok", "failed"] {
            let _ = m.reports.get_or_create(&OutcomeLabel { outcome: o.into() });
        }
        Metrics { registry: r, ..m }
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String never fails");
        out
    }

    /// The revision applied and on disk.
    pub fn applied(&self, revision: u64) {
        self.applied_revision.set(gauge(revision));
        self.update_lag();
    }

    /// A revision the coordinators announced (an event's, or a progress mark's).
    pub fn announced(&self, revision: u64) {
        if gauge(revision) > self.stream_revision.get() {
            self.stream_revision.set(gauge(revision));
        }
        self.update_lag();
    }

    fn update_lag(&self) {
        self.lag.set((self.stream_revision.get() - self.applied_revision.get()).max(0));
    }

    /// Counts one reconciler action.
    pub fn action(&self, action: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.actions.get_or_create(&ActionLabels { action: action.into(), outcome: outcome.into() }).inc();
    }

    /// Counts one acknowledged migration report.
    pub fn migration_report(&self, outcome: &str) {
        self.migration_reports.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    pub fn resync(&self, reason: &str) {
        self.resyncs.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn report(&self, ok: bool) {
        self.reports.get_or_create(&OutcomeLabel { outcome: if ok { "ok" } else { "failed" }.into() }).inc();
    }

    /// Times one driver call.
    pub fn driver_call(&self, call: &str, outcome: &str, took: Duration) {
        self.driver_calls
            .get_or_create(&CallLabels { call: call.into(), outcome: outcome.into() })
            .observe(took.as_secs_f64());
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Longest request head read, and how long a client may take to send it.
const REQUEST_MAX: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapers open at once.
const CONNECTIONS_MAX: usize = 16;

/// Serves `/metrics` and `/healthz` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, tls: Option<Tls>, metrics: Arc<Metrics>) {
    let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.server_config(false)));
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, metrics) = (acceptor.clone(), metrics.clone());
        tokio::spawn(async move {
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
                match acceptor {
                    Some(a) => answer(a.accept(tcp).await?, &metrics).await,
                    None => answer(tcp, &metrics).await,
                }
            })
            .await;
            match answered {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics request timed out"),
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > REQUEST_MAX {
            respond(&mut io, "431 Request Header Fields Too Large", "text/plain", "request too large\n").await?;
            // A lingering close: what the client still sends is read and dropped (a bounded
            // amount), so closing does not reset the connection before it read the answer.
            let mut left = 4 * REQUEST_MAX;
            while left > 0 {
                match io.read(&mut buf).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            return Ok(());
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => respond(&mut io, "200 OK", METRICS_CONTENT_TYPE, &metrics.encode()).await,
        ("GET", "/healthz") => respond(&mut io, "200 OK", "text/plain", "ok\n").await,
        ("GET", _) => respond(&mut io, "404 Not Found", "text/plain", "not found: try /metrics or /healthz\n").await,
        _ => respond(&mut io, "405 Method Not Allowed", "text/plain", "only GET\n").await,
    }
}

async fn respond<S: AsyncWrite + Unpin>(io: &mut S, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_follows_the_announced_and_applied_revisions() {
        let m = Metrics::new();
        m.announced(10);
        m.applied(4);
        assert_eq!(m.lag.get(), 6);
        m.announced(7); // an older mark never lowers what was announced
        assert_eq!(m.stream_revision.get(), 10);
        m.applied(10);
        assert_eq!(m.lag.get(), 0);
        let text = m.encode();
        assert!(text.contains("switchyard_agent_apply_lag_revisions 0"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_listener_answers_metrics_and_health_and_refuses_the_rest() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let m = Arc::new(Metrics::new());
        m.action("start", true);
        tokio::spawn(serve(l, None, m));
        let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains(METRICS_CONTENT_TYPE));
        assert!(r.contains("switchyard_agent_reconcile_actions_total{action=\"start\",outcome=\"ok\"} 1"), "{r}");
        assert!(request(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await.starts_with("HTTP/1.1 200 OK"));
        assert!(request(addr, b"GET /other HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(request(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        // A head that never ends is cut off at the bound, not buffered.
        let big = vec![b'a'; 3 * REQUEST_MAX];
        assert!(request(addr, &big).await.starts_with("HTTP/1.1 431"));
    }
}
