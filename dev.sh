#!/usr/bin/env bash
# The quick start's one entry point. Sets up .venv from requirements.lock on first use (and
# again only when the lock changes; KERAS_BACKEND=jax|torch, PIPELINE_ACCELERATOR=cuda and
# PIPELINE_REMOTE=ssh|s3 add their own locks), then:
#   ./dev.sh repro [dvc repro args]   run the pipeline (dvc repro)
#   ./dev.sh test [pytest args]       run the test suite
#   ./dev.sh team-server [options]    MLflow tracking server on PostgreSQL (--help; README)
#   ./dev.sh docs [serve|build]       the documentation site from docs/ (mkdocs; serve by default)
#   ./dev.sh <command ...>            run any command inside the environment (dvc, mlflow, python)
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
venv=.venv
command=${1:-}
[ $# -gt 0 ] && shift

# What to install: the default lock (TensorFlow on the CPU), plus the lock of the backend or
# accelerator asked for. The tests also run the pipeline on JAX, so they install it too.
locks=(requirements.lock)
case "${PIPELINE_ACCELERATOR:-cpu}" in
  cpu) ;;
  cuda)
    locks+=(requirements-cuda.lock)
    export KERAS_BACKEND=${KERAS_BACKEND:-jax} ;;
  *)
    echo "error: PIPELINE_ACCELERATOR=$PIPELINE_ACCELERATOR: use cpu (the default) or cuda" >&2
    exit 1 ;;
esac
case "${KERAS_BACKEND:-tensorflow}" in
  tensorflow) ;;
  jax | torch) locks+=("requirements-$KERAS_BACKEND.lock") ;;
  *)
    echo "error: KERAS_BACKEND=$KERAS_BACKEND: use tensorflow (the default), jax or torch" >&2
    exit 1 ;;
esac
# A DVC remote over SSH or on S3 needs its plugin: PIPELINE_REMOTE=ssh, s3 or ssh,s3.
remote_kinds=${PIPELINE_REMOTE:-}
for remote in ${remote_kinds//,/ }; do
  case "$remote" in
    ssh | s3) locks+=("requirements-$remote.lock") ;;
    *)
      echo "error: PIPELINE_REMOTE=$PIPELINE_REMOTE: use ssh, s3 or ssh,s3 (a shared folder needs none)" >&2
      exit 1 ;;
  esac
done
[ "$command" = test ] && locks+=(requirements-jax.lock)
# The documentation site's tools: ./dev.sh docs, and the tests, which build it (tests/test_docs.py).
case "$command" in test | docs) locks+=(requirements-docs.lock) ;; esac

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: $python is $("$python" --version 2>&1); Python 3.11+ is needed (set PYTHON=python3.11)" >&2; exit 1; }
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
for lock in "${locks[@]}"; do
  stamp=$venv/.installed-$lock  # each lock again only when it changes
  cmp -s "$lock" "$stamp" 2>/dev/null && continue
  echo "setting up $venv from $lock (once)..." >&2
  # (Some machines' pip config names index folders that do not exist; pip warns per package.)
  "${pip[@]}" -r "$lock" 2> >(grep -v "is neither a file nor a directory" >&2)
  [ "$lock" = requirements.lock ] && "${pip[@]}" --no-deps --no-build-isolation -e .
  cp "$lock" "$stamp"
done
export PATH="$PWD/$venv/bin:$PATH"
# MLflow would send usage telemetry (and wait on it at exit): nothing here reaches the internet.
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
# TensorFlow's start-up chatter (CPU instruction sets, oneDNN) is noise in every stage's log.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Stages may run from DVC's temporary experiment copies, where a relative mirror path breaks.
if [ -n "${PIPELINE_DATA_MIRROR:-}" ]; then
  PIPELINE_DATA_MIRROR=$(cd "$PIPELINE_DATA_MIRROR" && pwd)
  export PIPELINE_DATA_MIRROR
fi

case "$command" in
  repro)
    # dvc needs a git repository; a downloaded tarball (no .git) gets one.
    [ -d .git ] || git init -q
    exec dvc repro "$@"
    ;;
  test)
    exec python -m pytest "$@"
    ;;
  team-server)
    exec python -m pipeline.tracking.team_server "$@"
    ;;
  docs)
    # serve: http://127.0.0.1:8000, rebuilt on every edit; build: site/, failing on any warning.
    how=${1:-serve}
    [ $# -gt 0 ] && shift
    export NO_MKDOCS_2_WARNING=1  # Material's notice about MkDocs 2, printed on every build
    case "$how" in
      serve) exec mkdocs serve "$@" ;;
      build) exec mkdocs build --strict "$@" ;;
      *) echo "usage: ./dev.sh docs [serve|build] [mkdocs options]" >&2; exit 2 ;;
    esac
    ;;
  "")
    echo "usage: ./dev.sh repro | test | team-server | docs [serve|build] | <command in the environment>" >&2
    exit 2
    ;;
  *)
    exec "$command" "$@"
    ;;
esac
