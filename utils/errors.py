"""One error for "the user's input is wrong", reported the same way by every script.

A `UserError` names the file or flag and the problem (a missing or corrupt file, a malformed
json, a value out of range). Each script's `main` is wrapped in `cli(PROG)`, which prints
`PROG: error: MESSAGE` and exits 2, as argparse does for a bad flag. Any other exception is a
bug and keeps its traceback.
"""
import functools
import sys


class UserError(Exception):
    """Bad input from the user: a missing, unreadable or malformed file, a flag out of range."""


def cli(prog: str):
    """Decorate a script's `main(argv)`: a UserError becomes `PROG: error: ...` on stderr and exit 2."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except UserError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
        return run
    return wrap
