"""One exception type for bad user input, and the wrapper every entry point uses.

Entry points raise ``UserError`` for anything a user can fix (a path, a key, a value); ``run_cli``
turns it into one line on stderr and exit status 2, never a traceback.
"""
import errno
import sys


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def is_disk_full(exc):
    """An OSError with ENOSPC / EDQUOT, or torch.save's RuntimeError that wraps one."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("No space left" in text or
                                              "Disk quota exceeded" in text)


def write_refused(exc):
    """'no space left on the disk' / 'disk quota exceeded' / 'read-only file system' when
    ``exc`` is a write the file system refused, else None."""
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "read-only file system"
    if is_disk_full(exc):
        quota = getattr(exc, "errno", None) == errno.EDQUOT or "quota" in str(exc)
        return "disk quota exceeded" if quota else "no space left on the disk"
    return None


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
