"""Files written whole or not at all, and YAML read with one-line errors.

Every result file of the project goes through ``atomic_path``: the data is written to a
temporary file in the target's folder, flushed to the disk (fsync), and renamed over the target,
and the folder is flushed too, so a kill at any moment leaves the previous file intact and a
crash of the machine (power loss, a node going down) leaves the old file or the new one, never
an empty one, on file systems that do not order a rename after the data it names (XFS, many
cluster file systems) as well (docs/design.md, "Qualities").
"""
import contextlib
import errno
import json
import os
import shutil
import tempfile

from utils.errors import UserError, is_disk_full


class DiskFull(OSError):
    """A write that failed for lack of space; ``filename`` is the file being written."""

    def __init__(self, path):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def free_bytes(path):
    """Free bytes on the file system that will hold ``path`` (its nearest existing parent)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return shutil.disk_usage(p).free


def check_free(path, need, what, hint):
    """Refuse in one line, before anything is written, a job whose projected ``need`` bytes
    under ``path`` exceed the free space there."""
    free = free_bytes(path)
    if need > free:
        raise UserError(f"{what} needs about {need / 2**20:.1f} MB under {path}, "
                        f"{free / 2**20:.1f} MB are free: {hint}")


def _tmp_path(path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results should be readable like any other
    return tmp


def _fsync(path, folder=False):
    """Flush ``path`` (a file, or with ``folder`` a folder's entries) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:
        # some file systems cannot flush a folder (EINVAL): the file itself was flushed
        if not (folder and e.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, durable=True):
    """Yield a temp path in ``path``'s folder; on success it is renamed over ``path``
    (``durable``: flushed to the disk first; images and figures, which a rerun makes again,
    skip the flush)."""
    try:
        tmp = _tmp_path(path)
    except OSError as e:
        raise DiskFull(path) if is_disk_full(e) else e
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(os.path.dirname(os.path.abspath(path)), folder=True)
    except Exception as e:
        if is_disk_full(e):
            raise DiskFull(path) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    """torch.save, atomically."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path, **kw):
    """A matplotlib figure, written whole or not at all (its format from ``path``)."""
    with atomic_path(path, durable=False) as tmp:
        fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or "png", **kw)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _strict_loader():
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last
    one silently: a second `sampling:` section would replace the first without a word)."""
    import yaml

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep)
    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Strict


def load_yaml(path, what="file"):
    """Parse a YAML file; a missing, unreadable or invalid file (a key given twice included)
    is one UserError line."""
    import yaml
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_strict_loader())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})")


def read_json(path, default=None):
    """A JSON file's content (``default`` when there is no file)."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    """The records of a JSON-lines file ([] when there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
