# Sourced by scripts/demo and scripts/test: create or refresh .venv, then activate it.
# Re-installs only when setup.cfg or constraints.txt changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.haqc-installed"
want="$(cat "$root/setup.cfg" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "haqc: installing into $venv (first run takes a few minutes; log: $venv/install.log)" >&2
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -c "$root/constraints.txt" \
            -e "$root[dev]" > "$venv/install.log" 2>&1; then
        tail -n 20 "$venv/install.log" >&2
        echo "haqc: installation failed; the full log is $venv/install.log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$root"
