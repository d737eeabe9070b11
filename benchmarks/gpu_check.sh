#!/usr/bin/env bash
# The prepared GPU check (benchmarks/README.md): one command, about 5 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root, $OUT set
#   bash benchmarks/gpu_check.sh --dry-run    # on a CPU: small sizes, the same code path (tests, CI)
#
# On the GPU machine it first installs what that machine lacks from wheels prepared here in .whl/
# (git-ignored; benchmarks/README.md gives the pip download command), then the package itself
# (pip install --no-deps -e .; the repository root on PYTHONPATH if that fails), then runs
# benchmarks/gpu_check.py under a hard overall timeout. Results: $OUT/gpu_check.{json,md,log} and
# $OUT/pytest_cuda.log ($OUT defaults to output/gpu_check). Extra arguments go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
export OUT="${OUT:-$ROOT/output/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done

if [ "$dry" = 0 ]; then
    echo "== install (wheels from .whl/, then the package)"
    if compgen -G ".whl/*.whl" >/dev/null; then
        SITE="${GPU_CHECK_SITE:-/tmp/ibc_gpu_check_site}"
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" .whl/*.whl; then
            export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
            echo "installed $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')into $SITE"
        else
            echo "WARNING: installing the wheels of .whl/ failed; the env section will name what is missing"
        fi
    else
        echo "WARNING: no .whl/*.whl: faiss-cpu and omegaconf must already be installed (benchmarks/README.md)"
    fi
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
        || echo "WARNING: pip install -e . failed; importing ibc_geo from $ROOT through PYTHONPATH"
fi
# The working tree first, whether or not the editable install worked.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# A hard limit over everything (the sections have their own budgets, ~5.5 minutes in all).
limit="${GPU_CHECK_TIMEOUT:-420}"
timeout -k 10 "$limit" "$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu_check.py ran past the overall limit of $limit s; partial results in $OUT" | tee -a "$OUT/gpu_check.log"
exit "$rc"
