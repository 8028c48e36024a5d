#!/usr/bin/env bash
# Writes the configs of deploy/compose.yaml into DIR with fresh random tokens, the cluster's CA
# and every process's certificate in DIR/tls (made by `switchyard cert`: the CLI is $SWITCHYARD_BIN,
# else `switchyard` on the PATH), and DIR/cli.env with the admin token and the CA for the CLI.
# Existing files are kept (run it again safely).
set -euo pipefail
dir=${1:?usage: make-configs.sh DIR}
sy=${SWITCHYARD_BIN:-switchyard}
net=${SWITCHYARD_NET:-172.29.7}
command -v "$sy" >/dev/null || { echo "make-configs.sh: no switchyard CLI ($sy): build it or set SWITCHYARD_BIN" >&2; exit 2; }
mkdir -p "$dir"/sim
# TLS on every link: one CA for the cluster; coordinators' certificates name their host names
# and fixed addresses, agents' their host (and its host name, for scraping the agent's metrics).
[ -f "$dir/tls/ca.pem" ] || "$sy" cert ca --dir "$dir/tls" >/dev/null
for n in 1 2 3; do
  [ -f "$dir/tls/node-$n.pem" ] || "$sy" cert node "$n" --dir "$dir/tls" --names "coord$n,$net.1$n" >/dev/null
  [ -f "$dir/tls/host-h$n.pem" ] || "$sy" cert host "h$n" --dir "$dir/tls" --names "h$n" >/dev/null
done
rand() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
[ -f "$dir/secrets.env" ] || cat > "$dir/secrets.env" <<EOT
SECRET=$(rand)
ADMIN=$(rand)
OPERATOR=$(rand)
AGENT_H1=$(rand)
AGENT_H2=$(rand)
AGENT_H3=$(rand)
EOT
chmod 0600 "$dir/secrets.env"
. "$dir/secrets.env"
# Coordinators keep tokens as SHA-256 hashes only.
hash() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
for n in 1 2 3; do
  mkdir -p "$dir/coord$n"
  [ -f "$dir/coord$n.toml" ] || (umask 077; cat > "$dir/coord$n.toml") <<EOT
node_id = $n
data_dir = "/var/lib/switchyard/data"
raft_listen = "0.0.0.0:7101"
api_listen = "0.0.0.0:7201"
raft_advertise = "coord$n:7101"
api_advertise = "coord$n:7201"
cluster_secret = "$SECRET"

[[tokens]]
sha256 = "$(hash "$ADMIN")"
role = "admin"
name = "admin"

[[tokens]]
sha256 = "$(hash "$OPERATOR")"
role = "read_only"

[[tokens]]
sha256 = "$(hash "$AGENT_H1")"
role = "agent"
host = "h1"

[[tokens]]
sha256 = "$(hash "$AGENT_H2")"
role = "agent"
host = "h2"

[[tokens]]
sha256 = "$(hash "$AGENT_H3")"
role = "agent"
host = "h3"

[api]
host_report_timeout_ms = 5000

[migration]
transferring_timeout_ms = 60000

[tls]
ca = "/etc/switchyard/tls/ca.pem"
cert = "/etc/switchyard/tls/node-$n.pem"
key = "/etc/switchyard/tls/node-$n.key"
EOT
done
for n in 1 2 3; do
  mkdir -p "$dir/agent-h$n"
  var=AGENT_H$n
  [ -f "$dir/agent-h$n.toml" ] || (umask 077; cat > "$dir/agent-h$n.toml") <<EOT
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

[metrics]
listen = "0.0.0.0:9464"

[tls]
ca = "/etc/switchyard/tls/ca.pem"
cert = "/etc/switchyard/tls/host-h$n.pem"
key = "/etc/switchyard/tls/host-h$n.key"
EOT
done
(umask 077; printf 'SWITCHYARD_TOKEN=%s\nSWITCHYARD_CA=%s\n' "$ADMIN" "$(cd "$dir/tls" && pwd)/ca.pem" > "$dir/cli.env")
# The containers run as uid/gid 10001 (the image's user): it must read its configuration and
# key and write its data. Without root, run compose with SWITCHYARD_UID/GID set to your ids.
if [ "$(id -u)" = 0 ]; then
  chown 10001:10001 "$dir"/coord[123].toml "$dir"/agent-h[123].toml "$dir"/tls/node-*.key "$dir"/tls/host-*.key
  chown -R 10001:10001 "$dir"/coord[123] "$dir"/agent-h[123] "$dir"/sim
fi
echo "configs in $dir; certificates in $dir/tls; admin token and CA in $dir/cli.env"
