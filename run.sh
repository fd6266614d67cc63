#!/usr/bin/env bash
# Set up the environment (once; later runs are fast) and run a job in it.
#   ./run.sh demo       the main job: demo dataset -> train -> evaluate
#   ./run.sh test [...] the test suite (arguments go to pytest)
#   ./run.sh setup      only set up
#   ./run.sh ARGS...    any effnet command, e.g. ./run.sh models
set -euo pipefail
cd "$(dirname "$0")"
VENV="${EFFNET_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.effnet-setup" want
  want="$(cat pyproject.toml packages/*/pyproject.toml run.sh | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  # The PyTorch pair first, from pip (it takes them from the local disk), then effnet with its
  # torch-free runtime distribution (packages/effnet-runtime), in one command so that pip takes
  # that dependency from this repository, not from an index. The ray extra too, so that the Ray
  # engine's tests (tests/predict/test_ray*.py) run in the suite rather than skip.
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/python" -m pip install --quiet -e ./packages/effnet-runtime -e '.[dev,ray]'
  echo "$want" > "$stamp"
}

# The web page test (tests/serve/test_page.py) drives Debian's Chromium: install it when it is
# missing and this is root with apt-get (a no-op once installed; otherwise that test is skipped).
browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing chromium and chromium-driver for the browser test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "run.sh: could not install chromium; the browser test will be skipped" >&2
  fi
}

job="${1:-demo}"
[ $# -gt 0 ] && shift
setup
case "$job" in
  setup) ;;
  test) browser; exec "$VENV/bin/python" -m pytest "$@" ;;
  demo) exec "$VENV/bin/effnet" demo "$@" ;;
  *) exec "$VENV/bin/effnet" "$job" "$@" ;;
esac
