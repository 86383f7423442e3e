# Sourced by the *_commands.sh scripts and cal_fid.sh (from the repository root): the Python to
# run (PYTHON if set, else the README's .venv, else python3) and `layout`, which prints a path
# of the experiment layout (earlybird_scripts/layout_path.py; EXP must be set when it is used).
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || echo python); fi
fi
layout() { "$PYTHON" earlybird_scripts/layout_path.py --exp "$EXP" "$@"; }  # paths: core/layout.py
