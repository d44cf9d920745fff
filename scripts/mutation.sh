#!/usr/bin/env bash
# Mutation testing of the verdict code: the paper's metrics, the validation metrics and gates, the
# thresholds and the report (the modules in [tool.mutmut] paths_to_mutate of pyproject.toml), against
# the fast tests that guard them (pytest_add_cli_args_test_selection).  Not part of CI: it takes
# tens of minutes on 2 cores.  Prints the summary; the score is killed / (killed + survived).
#   scripts/mutation.sh            # run (incremental: reuses mutants/ from an earlier run)
#   scripts/mutation.sh --fresh    # start over
# Needs mutmut (pip install mutmut, 3.x) in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ "${1:-}" = "--fresh" ] && rm -rf mutants
unset PYTHONPATH  # the mutated copy under mutants/ must be the one imported
nice -n 15 "$PY" -m mutmut run --max-children "${JOBS:-2}" || true
mkdir -p mutants && "$PY" -m mutmut results --all true > mutants/results.txt 2>/dev/null || "$PY" -m mutmut results > mutants/results.txt || true
"$PY" - <<'PY'
import collections, re
counts = collections.Counter()
for line in open("mutants/results.txt"):
    m = re.match(r"\s*(\S+): (\S.*)$", line)
    if m:
        counts[m.group(2).strip()] += 1
killed, survived = counts.get("killed", 0), counts.get("survived", 0)
print(dict(counts))
total = killed + survived
print(f"mutation score: {killed}/{total} killed = {100 * killed / total:.1f} %" if total else "no mutants scored")
PY
