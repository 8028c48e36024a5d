#!/usr/bin/env bash
# Writes the configs of deploy/compose.yaml into DIR with fresh random tokens, and DIR/cli.env
# with the admin token. Existing files are kept (run it again safely).
set -euo pipefail
dir=${1:?usage: make-configs.sh DIR}
mkdir -p "$dir"/sim
rand() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
[ -f "$dir/secrets.env" ] || cat > "$dir/secrets.env" <<EOT
SECRET=$(rand)
ADMIN=$(rand)
OPERATOR=$(rand)
AGENT_H1=$(rand)
AGENT_H2=$(rand)
AGENT_H3=$(rand)
EOT
. "$dir/secrets.env"
for n in 1 2 3; do
  mkdir -p "$dir/coord$n"
  [ -f "$dir/coord$n.toml" ] || cat > "$dir/coord$n.toml" <<EOT
node_id = $n
data_dir = "/var/lib/switchyard/data"
raft_listen = "0.0.0.0:7101"
api_listen = "0.0.0.0:7201"
raft_advertise = "coord$n:7101"
api_advertise = "coord$n:7201"
cluster_secret = "$SECRET"

[[tokens]]
token = "$ADMIN"
role = "admin"
name = "admin"

[[tokens]]
token = "$OPERATOR"
role = "operator"

[[tokens]]
token = "$AGENT_H1"
role = "agent"
host = "h1"

[[tokens]]
token = "$AGENT_H2"
role = "agent"
host = "h2"

[[tokens]]
token = "$AGENT_H3"
role = "agent"
host = "h3"

[api]
host_report_timeout_ms = 5000

[migration]
transferring_timeout_ms = 60000
EOT
done
for n in 1 2 3; do
  mkdir -p "$dir/agent-h$n"
  var=AGENT_H$n
  [ -f "$dir/agent-h$n.toml" ] || cat > "$dir/agent-h$n.toml" <<EOT
host = "h$n"
endpoints = ["coord1:7201", "coord2:7201", "coord3:7201"]
token = "${!var}"
data_dir = "/var/lib/switchyard/data"
report_interval_ms = 1000

[driver]
kind = "simulated"
state_dir = "/var/lib/switchyard-sim"
transfer_ms = 2000
freeze_ms = 100
EOT
done
echo "SWITCHYARD_TOKEN=$ADMIN" > "$dir/cli.env"
echo "configs in $dir; admin token in $dir/cli.env"
