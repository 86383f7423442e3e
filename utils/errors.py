"""One exception type for bad user input, and the wrapper every entry point uses.

Entry points raise ``UserError`` for anything a user can fix (a path, a key, a value); ``run_cli``
turns it into one line on stderr and exit status 2, never a traceback.
"""
import sys


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def run_cli(fn, *args, **kwargs):
    try:
        rc = fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (OSError, RuntimeError) as e:
        from utils.io import write_refused
        why = write_refused(e)
        if why is None:
            raise
        # every result file is written whole or not at all (utils/io.py): what was written
        # before is intact, and a rerun reuses it
        print(f"error: {why} while writing {getattr(e, 'filename', None) or 'a result file'}; "
              f"nothing partial was left there. Free space, then rerun the same command: "
              f"finished work is reused", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc or 0)
