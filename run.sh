#!/usr/bin/env bash
# Set up the environment (once; later runs are fast) and run a job in it.
#   ./run.sh demo       the main job: demo dataset -> train -> evaluate
#   ./run.sh test [...] the test suite (arguments go to pytest)
#   ./run.sh setup      only set up
#   ./run.sh ARGS...    any effnet command, e.g. ./run.sh models
set -euo pipefail
cd "$(dirname "$0")"
VENV="${EFFNET_VENV:-.venv}"
EDGE_VENV="${EFFNET_EDGE_VENV:-.venv-edge}"
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

# The edge targets' converters (the `edge` extra: executorch, litert-torch, ai-edge-litert) pin
# typing-extensions<4.13 (through xdsl), which would downgrade pydantic and break selenium in
# $VENV. They get their own venv layered over $VENV (a .pth file puts $VENV's packages after
# theirs); the edge tests run their conversions in it (EFFNET_EDGE_PYTHON). Cached by a stamp.
setup_edge() {
  # (called in a `||` list, where set -e does not apply: every step returns on failure)
  if [ ! -x "$EDGE_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$EDGE_VENV" || return 1
  fi
  local stamp="$EDGE_VENV/.effnet-setup" want site
  want="$(cat pyproject.toml packages/*/pyproject.toml run.sh | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  site="$("$EDGE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || return 1
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz_effnet_main.pth" \
    || return 1
  "$EDGE_VENV/bin/python" -m pip install --quiet --upgrade pip || return 1
  "$EDGE_VENV/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1 -e ./packages/effnet-runtime \
    -e '.[edge]' || return 1
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
  setup) setup_edge ;;
  test)
    browser
    # a failed edge set-up fails the edge tests (they do not skip), not the whole suite
    setup_edge || echo "run.sh: could not set up $EDGE_VENV; the edge tests will fail" >&2
    case "$EDGE_VENV" in /*) edge="$EDGE_VENV" ;; *) edge="$PWD/$EDGE_VENV" ;; esac
    EFFNET_EDGE_PYTHON="$edge/bin/python" exec "$VENV/bin/python" -m pytest "$@" ;;
  demo) exec "$VENV/bin/effnet" demo "$@" ;;
  *) exec "$VENV/bin/effnet" "$job" "$@" ;;
esac
