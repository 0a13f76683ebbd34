#!/usr/bin/env bash
# Every node, on every `ray up`: a virtualenv with this project (Ray's dashboard, the offline ImageNet weights) installed,
# put on the login shell's PATH, where the launcher's `ray start` / `ray stop` look for it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cluster.env"
[ -x "$MASKCLF_VENV/bin/python" ] || python3 -m venv "$MASKCLF_VENV"
"$MASKCLF_VENV/bin/pip" install --quiet --disable-pip-version-check -e "$(dirname "$here")[cluster,weights]"
line="export PATH=\"$MASKCLF_VENV/bin:\$PATH\" RAY_AUTH_MODE=token; [ -f ~/.maskclf-cluster ] && . ~/.maskclf-cluster"
# last in .bashrc, so that it wins over what the image puts on PATH (conda, pyenv); the launcher's
# shells are interactive (bash -i), so an early return for non-interactive shells does not skip it
{ grep -vxF "$line" ~/.bashrc 2>/dev/null || true; printf '%s\n' "$line"; } > ~/.bashrc.maskclf
mv ~/.bashrc.maskclf ~/.bashrc
echo "maskclf installed in $MASKCLF_VENV: $("$MASKCLF_VENV/bin/python" -c 'import maskclf, ray; print("ray", ray.__version__)')"
