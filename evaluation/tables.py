"""Results as data: every Markdown results table also written as ``.json`` and ``.csv`` beside
it, with the same rows and columns, at full precision (None / empty for a missing value)."""
import csv
import io
import os

from utils.io import atomic_write_json, atomic_write_text


def write_data(md_path, columns, rows):
    """``rows``: dicts keyed by ``columns``; writes {stem}.json ({"columns", "rows"}) and
    {stem}.csv beside ``md_path``; returns their paths."""
    stem = os.path.splitext(md_path)[0]
    data = [{c: r.get(c) for c in columns} for r in rows]
    atomic_write_json(stem + ".json", {"columns": list(columns), "rows": data})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in data:
        writer.writerow({c: "" if v is None else v for c, v in r.items()})
    atomic_write_text(stem + ".csv", buf.getvalue())
    return stem + ".json", stem + ".csv"
