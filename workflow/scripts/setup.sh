#!/usr/bin/env bash
# One-time setup: system tools (ffmpeg, graphviz, chromium) and the pinned virtual environment in .venv.
# Idempotent: a finished step is skipped, so `make demo` / `make test` can call it every time.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
command -v dot >/dev/null || need_apt+=(graphviz)
# Headless browser: the report tests check that its pages' videos and plots really decode.
command -v chromium >/dev/null || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${need_apt[*]}; install them (e.g. 'sudo apt-get install ${need_apt[*]}') and rerun" >&2
    exit 1
  fi
fi

stamp=.venv/.installed
if [[ ! -f $stamp || envs/requirements-cpu.txt -nt $stamp || pyproject.toml -nt $stamp ]]; then
  py=${PYTHON:-python3.11}
  command -v "$py" >/dev/null || { echo "setup: $py not found; longvid needs Python 3.11" >&2; exit 1; }
  [[ -x .venv/bin/python ]] || "$py" -m venv .venv
  echo "setup: installing pinned dependencies into .venv (about 2 minutes the first time)"
  .venv/bin/pip install -q -r envs/requirements-cpu.txt
  # PySceneDetect declares the GUI build of OpenCV; we use the headless one (already pinned above).
  .venv/bin/pip install -q --no-deps scenedetect==0.7.2 click platformdirs
  .venv/bin/pip install -q --no-deps -e .
  touch "$stamp"
fi
