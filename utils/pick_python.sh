# Sourced by hw2_{1,2,3}.sh with $here set to the project root: sets $python to $PYTHON if set,
# else the project's .venv (made by setup.sh) if present, else python3.
python="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
