#!/usr/bin/env bash
# Every node, on every `ray up`: a virtualenv with this project (and Ray's dashboard) installed,
# put first on the login shell's PATH, where the launcher's `ray start` / `ray stop` look for it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cluster.env"
[ -x "$MASKCLF_VENV/bin/python" ] || python3 -m venv "$MASKCLF_VENV"
"$MASKCLF_VENV/bin/pip" install --quiet --disable-pip-version-check -e "$(dirname "$here")[cluster]"
line="export PATH=\"$MASKCLF_VENV/bin:\$PATH\" RAY_AUTH_MODE=token; [ -f ~/.maskclf-cluster ] && . ~/.maskclf-cluster"
if ! grep -qxF "$line" ~/.bashrc 2>/dev/null; then  # first in .bashrc: before any early return of a non-interactive shell
    { printf '%s\n' "$line"; cat ~/.bashrc 2>/dev/null || true; } > ~/.bashrc.maskclf && mv ~/.bashrc.maskclf ~/.bashrc
fi
echo "maskclf installed in $MASKCLF_VENV: $("$MASKCLF_VENV/bin/python" -c 'import maskclf, ray; print("ray", ray.__version__)')"
