#!/usr/bin/env bash
# Install radiomics-node as a systemd service on a plain Debian 12 (or newer) server.
#
#   sudo deploy/install-debian.sh            # from a checkout of the repository
#
# What it does (docs/installation.md explains each step; run it again to upgrade):
#   1. apt: python3, python3-venv (Debian 12 ships Python 3.11);
#   2. a system user and group radiomics-node, no login shell, home /var/lib/radiomics-node;
#   3. a virtual environment in /opt/radiomics-node/venv with this checkout installed;
#   4. /etc/radiomics-node/node.yaml from deploy/radiomics-node.example.yaml, only if absent
#      (root:radiomics-node, 0640: it may hold passwords);
#   5. the unit deploy/systemd/radiomics-node.service, enabled and (re)started;
#   6. the configuration checked offline, and /healthz asked once the node runs.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root (sudo $0)" >&2
    exit 1
fi
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/radiomics-node
config=/etc/radiomics-node/node.yaml

echo "1/6 Debian packages"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    python3 python3-venv ca-certificates curl

echo "2/6 user radiomics-node"
if ! getent passwd radiomics-node >/dev/null; then
    adduser --system --group --home /var/lib/radiomics-node --no-create-home \
        --shell /usr/sbin/nologin radiomics-node
fi

echo "3/6 virtual environment in $prefix/venv"
install -d -m 0755 "$prefix"
[[ -x $prefix/venv/bin/python ]] || python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --upgrade pip
"$prefix/venv/bin/python" -m pip install -q "$src"

echo "4/6 configuration $config"
install -d -m 0750 -o root -g radiomics-node /etc/radiomics-node
if [[ ! -e $config ]]; then
    install -m 0640 -o root -g radiomics-node "$src/deploy/radiomics-node.example.yaml" "$config"
    echo "    new configuration from the example: edit peers, rules and destinations"
else
    echo "    kept the existing configuration"
fi
install -d -m 0750 -o radiomics-node -g radiomics-node /var/lib/radiomics-node

echo "5/6 systemd unit"
install -m 0644 "$src/deploy/systemd/radiomics-node.service" /etc/systemd/system/
"$prefix/venv/bin/radiomics-node" config check --offline "$config"
systemctl daemon-reload
systemctl enable radiomics-node.service
systemctl restart radiomics-node.service

echo "6/6 health"
port=$("$prefix/venv/bin/python" -c "
from node.config import load_config; print(load_config('$config').status.port)")
for _ in $(seq 30); do
    if curl -fsS "http://127.0.0.1:$port/healthz"; then
        echo
        echo "radiomics-node runs: systemctl status radiomics-node; journalctl -u radiomics-node"
        echo "network checks of the configuration: $prefix/venv/bin/radiomics-node config check $config"
        exit 0
    fi
    sleep 2
done
echo "the node did not answer /healthz within 60 s: journalctl -u radiomics-node" >&2
exit 1
