#!/usr/bin/env bash
# `ray up` for real on this machine: cluster/local.yaml (the commands of cluster.yaml) brought up over
# SSH at 127.0.0.1, the MLflow server on the head answering, a smoke search submitted to the cluster
# and logged to that server, then `ray down`. Run from anywhere as root, with Ray's CLI on PATH:
#     bash cluster/up_local.sh
# It installs openssh-server and rsync when missing and makes its own SSH key (~/.ssh/maskclf_local).
# `ray stop` (run by ray up and ray down) stops every Ray on this machine: run it when no other is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONFIG=cluster/local.yaml
KEY=~/.ssh/maskclf_local
STUDY="ray-up-$(date +%Y%m%d-%H%M%S)"
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
command -v ray > /dev/null || { echo "error: no ray on PATH: activate the environment this project is installed in" >&2; exit 2; }

step "sshd on 127.0.0.1:22 and a key for root"
if ! command -v sshd > /dev/null || ! command -v rsync > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync > /dev/null
fi
mkdir -p /run/sshd ~/.ssh && chmod 700 ~/.ssh
pgrep -x sshd > /dev/null || /usr/sbin/sshd
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C maskclf-local -f "$KEY"
grep -qF "$(cat "$KEY.pub")" ~/.ssh/authorized_keys 2>/dev/null || cat "$KEY.pub" >> ~/.ssh/authorized_keys
chmod 600 ~/.ssh/authorized_keys
ssh -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=accept-new root@127.0.0.1 true
echo "ssh root@127.0.0.1 with $KEY: ok"
[ -f ~/.ray/auth_token ] || ray get-auth-token --generate > /dev/null

stop_mlflow() { [ -f ~/mlflow/server.pid ] && kill -- "-$(cat ~/mlflow/server.pid)" 2> /dev/null || true; }
cleanup() {
    step "ray down"
    ray down -y "$CONFIG" || true
    stop_mlflow
    pgrep -f "raylet|gcs_server" > /dev/null && echo "Ray processes are still running" >&2 || echo "no Ray process left"
}
trap cleanup EXIT

step "ray up -y $CONFIG"
t0=$(date +%s)
ray up -y --no-config-cache "$CONFIG"
echo "ray up took $(( $(date +%s) - t0 )) s"

step "the MLflow server on the head"
uri=$(ray exec "$CONFIG" 'cat ~/.maskclf-cluster' 2> /dev/null | grep -o 'http://[0-9.]*:[0-9]*' | tail -1)
python -c "import urllib.request; print('$uri/health:', urllib.request.urlopen('$uri/health', timeout=5).read().decode())"

step "a smoke search submitted to the cluster (study $STUDY)"
t0=$(date +%s)
ray exec "$CONFIG" "cd ~/maskclf && python -m search.tune --config conf/smoke.yaml run.dir=\$HOME/runs-local-cluster run.study=$STUDY"
echo "the search took $(( $(date +%s) - t0 )) s"

step "what the head's MLflow server holds for $STUDY"
python - "$uri" "$STUDY" <<'PY'
import sys
from mlflow import MlflowClient

uri, study = sys.argv[1:]
client = MlflowClient(uri)
exp = client.get_experiment_by_name(study)
runs = client.search_runs([exp.experiment_id])
trials = [r for r in runs if r.data.tags.get("maskclf.kind") == "trial"]
print(f"{uri}: experiment {study}, {len(runs)} runs, {len(trials)} trials: " + ", ".join(
    f"{r.info.run_name} val_f1={r.data.metrics.get('val_f1', float('nan')):.3f} ({r.info.status})" for r in trials))
assert trials and all(r.info.status == "FINISHED" for r in trials), "trial runs missing or unfinished"
PY
