#!/usr/bin/env bash
# Screenshot a study's parent run in the MLflow UI with headless Chromium.
#
#   benchmarks/ui_screenshot.sh STUDY_DIR [OUT_DIR] [PORT]
#
# Starts `metatune ui STUDY_DIR --port PORT` on 127.0.0.1, waits for /health, takes screenshots
# of the runs view `metatune ui` prints (the trials table and its chart view) and of the study's
# parent run (the overview, whose description starts with the study table; the table artifact;
# the study plot artifact), then stops the UI by its process id (`metatune ui` stops its own
# mlflow server and helpers). Needs Debian's chromium (apt-get install -y chromium). Writes
# OUT_DIR/{runs_view,runs_charts,parent_run,study_table,study_plot}.png.
set -euo pipefail
STUDY=${1:?usage: $0 STUDY_DIR [OUT_DIR] [PORT]}
OUT=${2:-.}
PORT=${3:-5055}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$CHROMIUM" ] || { echo "chromium not found (apt-get install -y chromium)" >&2; exit 3; }
mkdir -p "$OUT"

# The experiment and parent run ids, read from the study's own store.
read -r EXP RUN < <("$PY" - "$STUDY" <<'PYEOF'
import sys
from metatune.study.spec import open_study
from mlflow.tracking import MlflowClient
s = open_study(sys.argv[1])
c = MlflowClient(s.tracking_uri)
e = c.get_experiment_by_name(s.experiment)
r = c.search_runs([e.experiment_id], filter_string="tags.`metatune.role` = 'parent'")[0]
print(e.experiment_id, r.info.run_id)
PYEOF
)

LOG=$(mktemp)
"$PY" -m metatune.cli ui "$STUDY" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
UI_PID=$!
PROFILE=$(mktemp -d)
cleanup() {
  kill -TERM "$UI_PID" 2>/dev/null || true   # metatune ui then stops its server's process group
  wait "$UI_PID" 2>/dev/null || true
  rm -rf "$PROFILE" "$LOG"
}
trap cleanup EXIT

for _ in $(seq 1 120); do   # the server needs 10-15 s: poll /health
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  kill -0 "$UI_PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "MLflow UI did not come up" >&2; cat "$LOG" >&2; exit 1; }

shot() {
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$PROFILE" --window-size=1400,1000 --virtual-time-budget=20000 \
    --screenshot="$1" "$2" >/dev/null 2>&1
  echo "wrote $1 ($2)"
}
VIEW=$(sed -n "s/^MLflow UI for study '.*': \(http[^ ]*\)$/\1/p" "$LOG" | head -1)
[ -n "$VIEW" ] || { echo "metatune ui printed no URL" >&2; cat "$LOG" >&2; exit 1; }
shot "$OUT/runs_view.png" "$VIEW"
shot "$OUT/runs_charts.png" "$VIEW&compareRunsMode=CHART"
BASE="http://127.0.0.1:$PORT/#/experiments/$EXP/runs/$RUN"
shot "$OUT/parent_run.png" "$BASE"
shot "$OUT/study_table.png" "$BASE/artifacts/table/study_table.md"
shot "$OUT/study_plot.png" "$BASE/artifacts/table/study_plot.png"
