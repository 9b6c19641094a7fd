"""One error for "the user's input is wrong", reported the same way by every script.

A `UserError` names the file or flag and the problem (a missing or corrupt file, a malformed
json, a value out of range). Each script's `main` is wrapped in `cli(PROG)`, which prints
`PROG: error: MESSAGE` and exits 2, as argparse does for a bad flag. Any other exception is a
bug and keeps its traceback.
"""
import functools
import re
import sys


class UserError(Exception):
    """Bad input from the user: a missing, unreadable or malformed file, a flag out of range.

    Its message is one line: the file or flag, then the problem (a listing becomes a count and the first).
    """


def reason(e: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message', cut to `limit` characters: a library's exception quoted inside a
    one-line UserError (torch.load's, for one, spans a dozen lines)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # no terminal colour codes either
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
