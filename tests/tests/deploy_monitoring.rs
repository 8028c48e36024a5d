//! The monitoring examples in `deploy/monitoring/` are what Prometheus accepts, and the alert
//! rules fire when they should: `promtool check config`, `promtool check rules`, and
//! `promtool test rules` on the rules' unit tests (`switchyard-alerts.test.yml`). promtool comes
//! with Debian's `prometheus` package, which `scripts/install-deps` installs.

use std::path::Path;
use std::process::Command;

fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run promtool (scripts/install-deps installs it, package prometheus): {e}"));
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_scrape_configuration_and_alert_rules_are_valid_and_the_alerts_fire_when_they_should() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    promtool(&dir, &["check", "config", "--syntax-only", "prometheus.yml"]);
    promtool(&dir, &["check", "rules", "switchyard-alerts.yml"]);
    promtool(&dir, &["test", "rules", "switchyard-alerts.test.yml"]);
}
