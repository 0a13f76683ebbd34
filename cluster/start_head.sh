#!/usr/bin/env bash
# The head, on every `ray up`: the MLflow tracking server and Ray's head node, both bound to the
# address the launcher reached this node at (its private address on a cloud), with Ray token
# authentication on. Drivers started here (ray exec, ray job submit) find both through ~/.maskclf-cluster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cluster.env"
ip="$(echo "${SSH_CONNECTION:-}" | awk '{print $3}')"
ip="${ip:-$(hostname -I | awk '{print $1}')}"
export RAY_AUTH_MODE=token MLFLOW_TRACKING_URI="http://$ip:$MLFLOW_PORT"
printf 'export MLFLOW_TRACKING_URI=%s\n' "$MLFLOW_TRACKING_URI" > ~/.maskclf-cluster

mkdir -p ~/mlflow
if [ -f ~/mlflow/server.pid ]; then  # a server of an earlier `ray up`: its whole process group
    kill -- "-$(cat ~/mlflow/server.pid)" 2>/dev/null || true
    sleep 2
fi
artifacts="${MLFLOW_ARTIFACTS:-$HOME/mlflow/artifacts}"
setsid nohup mlflow server --host "$ip" --port "$MLFLOW_PORT" --workers 2 \
    --backend-store-uri "sqlite:///$HOME/mlflow/mlflow.db" --artifacts-destination "$artifacts" \
    > ~/mlflow/server.log 2>&1 < /dev/null &
echo $! > ~/mlflow/server.pid
for _ in $(seq 120); do
    python -c "import urllib.request; urllib.request.urlopen('$MLFLOW_TRACKING_URI/health', timeout=2)" 2>/dev/null && break
    sleep 1
done
python -c "import urllib.request; urllib.request.urlopen('$MLFLOW_TRACKING_URI/health', timeout=2)" \
    || { echo "the MLflow server did not start; see ~/mlflow/server.log" >&2; tail -20 ~/mlflow/server.log >&2; exit 1; }
echo "MLflow tracking server: $MLFLOW_TRACKING_URI (artifacts: $artifacts)"

ulimit -n 65536 2>/dev/null || true
ray start --head --node-ip-address="$ip" --port=6379 --dashboard-host=127.0.0.1 \
    --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats
