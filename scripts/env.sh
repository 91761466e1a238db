# Sourced by scripts/demo (`source env.sh runtime`: haqc and what it needs to run) and scripts/test
# (`source env.sh dev`: also the test and export extras, torchvision, transformers, Ray, qonnx):
# create or refresh .venv, then activate it. Re-installs only when setup.cfg or constraints.txt
# changed since the last install of that set (a dev install serves the demo too).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
extras="${1:?env.sh: say runtime or dev}"
case "$extras" in runtime) spec="$root" ;; dev) spec="$root[dev]" ;; *) echo "env.sh: runtime or dev, not $extras" >&2; exit 2 ;; esac
want="$(cat "$root/setup.cfg" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
installed() { [ -f "$venv/.haqc-installed-$1" ] && [ "$(cat "$venv/.haqc-installed-$1")" = "$want" ]; }
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if ! installed dev && ! installed "$extras"; then
    echo "haqc: installing ($extras) into $venv (first run takes a few minutes; log: $venv/install.log)" >&2
    pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    # The distribution was called haqc before it became haqc-onnx (haqc on PyPI is another project):
    # a .venv from then has it installed, and the source tree its old metadata; remove both, so one
    # distribution provides the haqc package and its entry points.
    if "${pip[@]}" show haqc > /dev/null 2>&1; then
        "${pip[@]}" uninstall -y haqc > "$venv/install.log" 2>&1
        rm -rf "$root/haqc.egg-info"
    fi
    if ! "${pip[@]}" install -c "$root/constraints.txt" -e "$spec" >> "$venv/install.log" 2>&1; then
        tail -n 20 "$venv/install.log" >&2
        echo "haqc: installation failed; the full log is $venv/install.log" >&2
        exit 1
    fi
    echo "$want" > "$venv/.haqc-installed-$extras"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$root"
