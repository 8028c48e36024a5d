//! Scraping `/metrics` as Prometheus does (coordinators' and agents') and reading samples with
//! a Prometheus text parser.

use prometheus_parse::{Scrape, Value};
use switchyard_protocol::api::METRICS_CONTENT_TYPE;

use super::cluster::*;

/// Checks a `/metrics` answer (status, content type, OpenMetrics' `# EOF`) and parses it.
pub async fn parse(r: reqwest::Response) -> Scrape {
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ctype, METRICS_CONTENT_TYPE);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "an OpenMetrics exposition ends with # EOF");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// Scrapes coordinator `id` with the operator's token.
pub async fn scrape(cluster: &TestCluster, id: u64) -> Scrape {
    parse(cluster.http().get(cluster.url(id, "/metrics")).bearer_auth(READ_ONLY_TOKEN).send().await.unwrap()).await
}

/// Scrapes an agent's own metrics (over TLS, checked against the cluster's CA).
pub async fn scrape_agent(cluster: &TestCluster, agent: &AgentProc) -> Scrape {
    let url = format!("https://{}/metrics", agent.metrics);
    parse(cluster.http().get(url).send().await.unwrap()).await
}

/// The value of the sample `name` whose labels include `labels`; histograms: their count.
pub fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .next()
}

pub fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}
