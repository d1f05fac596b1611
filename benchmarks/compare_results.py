"""Compare two results folders array by array (proof that a refactor did not change results).

    python benchmarks/compare_results.py A B [--tables-ignore COLS] [--json-ignore KEYS] [--max-diffs N]

What is compared (relative paths; a file present on one side only is a difference):

* ``*.h5``: every group and dataset; datasets by dtype, shape and exact bytes (NaN payloads and -0.0
  count); attributes of every object, except the root ``provenance`` attribute that ``save_h5`` writes.
  String attributes that hold JSON are decoded (as ``load_h5`` does) and compared as JSON, dropping
  the ``--json-ignore`` keys at any depth.
* ``*.pt`` except ``*.resume.pt``: loaded with ``weights_only=True``; nested dicts/lists walked;
  tensors by dtype, shape and bytes; other leaves by type and value (floats bit for bit). The
  top-level ``provenance`` entry that ``save_torch`` adds is skipped.
* ``*.csv``: read with pandas; columns whose name matches a ``--tables-ignore`` pattern are dropped
  (default: provenance, commit, seconds, time, runtime, and the cost-benchmark measurements cpu_ms,
  peak_mb, memory_ratio); the rest by column set, dtype and cell value (NaN equals NaN).
* ``metrics.json`` and ``estep_check.json``: as JSON, without the ``--json-ignore`` keys at any depth
  (default: timing, provenance, seconds, and the file digests sha256 / artifacts, which hash files
  that carry the git commit in their provenance; the files themselves are compared directly).

Skipped: logs, benchmark TSVs, PNGs, ``*.prov.json`` sidecars, ``.config/``, ``.snakemake/``, temp
files of interrupted writes; anything else is counted under "not compared".

Exit status: 0 identical, 1 different, 2 bad arguments. Only the standard library, numpy, h5py,
pandas and torch (imported only when there are checkpoints) are used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TABLES_IGNORE = "provenance,commit,seconds,time,runtime,cpu_ms,peak_mb,memory_ratio"
DEFAULT_JSON_IGNORE = "timing,provenance,seconds,sha256,artifacts"
JSON_NAMES = ("metrics.json", "estep_check.json")
SKIP_DIRS = {".config", ".snakemake", "logs", "benchmarks"}
SKIP_SUFFIXES = (".prov.json", ".log", ".tsv", ".png", ".resume.pt")
H5_PROVENANCE_ATTR = "provenance"  # root attribute written by emprior.core.artifacts.save_h5
PT_PROVENANCE_KEY = "provenance"  # top-level entry written by emprior.core.artifacts.save_torch
BLOCK_BYTES = 64 << 20  # datasets larger than this are read in slices along the first axis
MISSING = object()


# ---------------------------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------------------------

@dataclass
class Stats:
    files: int = 0
    arrays: int = 0
    values: int = 0  # attributes, scalar leaves, table cells
    nbytes: int = 0  # size of side A's compared data
    diffs: int = 0


@dataclass
class Report:
    max_diffs: int
    stats: dict[str, Stats] = field(default_factory=dict)
    diffs: list[tuple[str, str, str]] = field(default_factory=list)  # (file, key path, what)
    n_diffs: int = 0
    diff_files: set[str] = field(default_factory=set)
    skipped: Counter = field(default_factory=Counter)
    not_compared: Counter = field(default_factory=Counter)
    largest: tuple[float, float, str, str] | None = None  # (max relative, max absolute, file, key)

    def cat(self, name: str) -> Stats:
        return self.stats.setdefault(name, Stats())

    def diff(self, category: str, file: str, key: str, what: str) -> None:
        self.cat(category).diffs += 1
        self.n_diffs += 1
        self.diff_files.add(file)
        for m in _SIZE.finditer(what):
            size = (float(m.group(2)), float(m.group(1)), file, key)
            if self.largest is None or size[:2] > self.largest[:2]:
                self.largest = size
        if len(self.diffs) < max(self.max_diffs, 1):
            self.diffs.append((file, key, what))


_SIZE = re.compile(r"max \|A-B\| = ([^,;\s]+), max relative = ([^,;\s)]+)")


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}/{key}" if path else str(key)


# ---------------------------------------------------------------------------------------------
# leaves, JSON-like trees
# ---------------------------------------------------------------------------------------------

def _leaf_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex):
        return struct.pack("<dd", a.real, a.imag) == struct.pack("<dd", b.real, b.imag)
    return a == b


def _leaf_what(a: Any, b: Any) -> str:
    if type(a) is not type(b):
        return f"type {type(a).__name__} vs {type(b).__name__}: A={_short(a)} B={_short(b)}"
    sizes = magnitude(a, b) if isinstance(a, (int, float)) and not isinstance(a, bool) else ""
    return f"value A={_short(a)} B={_short(b)}{sizes}"


class TreeComparer:
    """Walk two nested dict/list trees; ``leaf`` handles tensors/arrays, else plain equality."""

    def __init__(self, report: Report, category: str, file: str, ignore: set[str] = frozenset(),
                 ignore_top: set[str] = frozenset()):
        self.report, self.category, self.file = report, category, file
        self.ignore, self.ignore_top = set(ignore), set(ignore_top)

    def walk(self, a: Any, b: Any, path: str = "", depth: int = 0) -> None:
        st = self.report.cat(self.category)
        if isinstance(a, dict) and isinstance(b, dict):
            skip = self.ignore | (self.ignore_top if depth == 0 else set())
            keys = list(a) + [k for k in b if k not in a]
            for k in keys:
                if isinstance(k, str) and k in skip:
                    continue
                if k not in b:
                    self.report.diff(self.category, self.file, _join(path, k), "key only in A")
                elif k not in a:
                    self.report.diff(self.category, self.file, _join(path, k), "key only in B")
                else:
                    self.walk(a[k], b[k], _join(path, k), depth + 1)
            return
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
            if len(a) != len(b):
                self.report.diff(self.category, self.file, path or "/",
                                 f"{type(a).__name__} length {len(a)} vs {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                self.walk(x, y, _join(path, i), depth + 1)
            return
        if self.leaf(a, b, path or "/"):
            return
        st.values += 1
        if not _leaf_equal(a, b):
            self.report.diff(self.category, self.file, path or "/", _leaf_what(a, b))

    def leaf(self, a: Any, b: Any, path: str) -> bool:  # overridden for tensors
        return False


# ---------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------

def _element_hex(x: Any) -> str:
    return np.asarray(x).tobytes().hex()


def array_difference(a: np.ndarray, b: np.ndarray, offset: int = 0) -> str | None:
    """None when dtype, shape and bytes agree; else what differs (first element index, both values)."""
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype} (shape {a.shape} vs {b.shape})"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape} (dtype {a.dtype})"
    if a.dtype.kind == "O":  # variable-length strings/bytes: tobytes() would compare pointers
        fa, fb = a.ravel(), b.ravel()
        bad = [i for i in range(fa.size) if not _leaf_equal(fa[i], fb[i])]
        if not bad:
            return None
        i = bad[0]
        return (f"{len(bad)} of {fa.size} elements differ; first at index "
                f"{tuple(int(j) for j in np.unravel_index(i, a.shape)) if a.ndim else ()}: "
                f"A={_short(fa[i])} B={_short(fb[i])}")
    ca, cb = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if ca.tobytes() == cb.tobytes():
        return None
    if a.ndim == 0:
        return f"value A={_short(a[()])} B={_short(b[()])} (bytes {_element_hex(a)} vs {_element_hex(b)})"
    item = max(a.dtype.itemsize, 1)
    ua = ca.reshape(-1).view(np.uint8).reshape(-1, item)
    ub = cb.reshape(-1).view(np.uint8).reshape(-1, item)
    bad = np.flatnonzero((ua != ub).any(axis=1))
    i = int(bad[0])
    idx = list(np.unravel_index(i, a.shape))
    idx[0] += offset
    va, vb = ca.reshape(-1)[i], cb.reshape(-1)[i]
    return (f"{bad.size} of {a.size} elements differ; first at index {tuple(int(j) for j in idx)}: "
            f"A={_short(va)} B={_short(vb)} (bytes {_element_hex(va)} vs {_element_hex(vb)}, dtype {a.dtype})"
            f"{magnitude(ca, cb)}")


def magnitude(a: Any, b: Any) -> str:
    """``; max |A-B| = ..., max |A-B| / max(|A|, |B|) = ...`` over the finite elements of two numeric
    arrays (or scalars) of one shape, so that a last-bit difference (a processor's other kernels: relative
    ~1e-7 for float32, growing along EM iterations) reads differently from a regression; '' otherwise."""
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.dtype.kind not in "fiuc" or y.dtype.kind not in "fiuc" or x.size == 0:
        return ""
    x, y = x.astype(np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64), \
        y.astype(np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return ""
    d = np.abs(x[ok] - y[ok])
    scale = np.maximum(np.abs(x[ok]), np.abs(y[ok]))
    rel = np.divide(d, scale, out=np.zeros_like(d), where=scale > 0)
    return f"; max |A-B| = {d.max():.3g}, max relative = {rel.max():.3g}"


# ---------------------------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------------------------

def _h5_objects(f: Any) -> dict[str, Any]:
    import h5py

    objs: dict[str, Any] = {"/": f}

    def visit(name: str, obj: Any) -> None:
        objs[name] = obj if isinstance(obj, (h5py.Dataset, h5py.Group)) else None

    f.visititems(visit)
    return objs


def _attr_decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, str):
        try:
            return ("json", json.loads(value))
        except json.JSONDecodeError:
            return value
    return value


def _compare_attrs(rep: Report, rel: str, name: str, oa: Any, ob: Any, json_ignore: set[str]) -> None:
    st = rep.cat("h5")
    root = name == "/"
    prefix = "" if root else name
    ka, kb = list(oa.attrs.keys()), list(ob.attrs.keys())
    for k in ka + [k for k in kb if k not in ka]:
        if root and k == H5_PROVENANCE_ATTR:
            continue
        where = f"{prefix}@{k}"
        if k not in oa.attrs:
            rep.diff("h5", rel, where, "attribute only in B")
            continue
        if k not in ob.attrs:
            rep.diff("h5", rel, where, "attribute only in A")
            continue
        va, vb = _attr_decoded(oa.attrs[k]), _attr_decoded(ob.attrs[k])
        if isinstance(va, tuple) and isinstance(vb, tuple):  # both JSON strings
            TreeComparer(rep, "h5", rel, ignore=json_ignore).walk(va[1], vb[1], where)
            continue
        if isinstance(va, tuple) or isinstance(vb, tuple):
            st.values += 1
            rep.diff("h5", rel, where, f"JSON string vs not: A={_short(oa.attrs[k])} B={_short(ob.attrs[k])}")
            continue
        st.values += 1
        if isinstance(va, (str, bytes)) or isinstance(vb, (str, bytes)):
            if not _leaf_equal(va, vb):
                rep.diff("h5", rel, where, _leaf_what(va, vb))
            continue
        what = array_difference(np.asarray(va), np.asarray(vb))
        if what:
            rep.diff("h5", rel, where, what)


def _compare_dataset(rep: Report, rel: str, name: str, da: Any, db: Any) -> None:
    st = rep.cat("h5")
    st.arrays += 1
    if da.dtype != db.dtype or da.shape != db.shape:
        rep.diff("h5", rel, name, f"dtype {da.dtype} vs {db.dtype} (shape {da.shape} vs {db.shape})"
                 if da.dtype != db.dtype else f"shape {da.shape} vs {db.shape} (dtype {da.dtype})")
        return
    nbytes = int(np.prod(da.shape, dtype=np.int64)) * da.dtype.itemsize if da.shape is not None else 0
    st.nbytes += nbytes
    if da.shape is None:  # empty dataspace
        return
    if da.ndim == 0 or nbytes <= BLOCK_BYTES or da.shape[0] <= 1:
        what = array_difference(da[()], db[()])
    else:
        step = max(1, int(BLOCK_BYTES // max(nbytes // da.shape[0], 1)))
        what = None
        for start in range(0, da.shape[0], step):
            what = array_difference(da[start:start + step], db[start:start + step], offset=start)
            if what:
                what = f"{what} (found while reading rows {start}:{start + step} of {da.shape[0]}; " \
                       f"later rows not counted)"
                break
    if what:
        rep.diff("h5", rel, name, what)


def compare_h5(rep: Report, rel: str, pa: Path, pb: Path, json_ignore: set[str]) -> None:
    import h5py

    st = rep.cat("h5")
    st.files += 1
    try:
        fa, fb = h5py.File(pa, "r"), h5py.File(pb, "r")
    except OSError as exc:
        rep.diff("h5", rel, "/", f"unreadable HDF5: {str(exc).splitlines()[0]}")
        return
    with fa, fb:
        oa, ob = _h5_objects(fa), _h5_objects(fb)
        for name in list(oa) + [n for n in ob if n not in oa]:
            if name not in ob:
                rep.diff("h5", rel, name, f"{_kind(oa[name])} only in A")
                continue
            if name not in oa:
                rep.diff("h5", rel, name, f"{_kind(ob[name])} only in B")
                continue
            xa, xb = oa[name], ob[name]
            if _kind(xa) != _kind(xb):
                rep.diff("h5", rel, name, f"{_kind(xa)} vs {_kind(xb)}")
                continue
            if xa is None:
                continue
            if _kind(xa) == "dataset":
                _compare_dataset(rep, rel, name, xa, xb)
            _compare_attrs(rep, rel, name, xa, xb, json_ignore)


def _kind(obj: Any) -> str:
    import h5py

    if isinstance(obj, h5py.Dataset):
        return "dataset"
    if isinstance(obj, h5py.Group):
        return "group"
    return "other object"


# ---------------------------------------------------------------------------------------------
# torch checkpoints
# ---------------------------------------------------------------------------------------------

class CheckpointComparer(TreeComparer):
    def leaf(self, a: Any, b: Any, path: str) -> bool:
        import torch

        ta, tb = isinstance(a, torch.Tensor), isinstance(b, torch.Tensor)
        if not (ta or tb):
            return False
        st = self.report.cat(self.category)
        st.arrays += 1
        if not (ta and tb):
            self.report.diff(self.category, self.file, path, _leaf_what(a, b))
            return True
        if a.dtype != b.dtype:
            self.report.diff(self.category, self.file, path,
                             f"dtype {a.dtype} vs {b.dtype} (shape {tuple(a.shape)} vs {tuple(b.shape)})")
            return True
        if a.shape != b.shape:
            self.report.diff(self.category, self.file, path, f"shape {tuple(a.shape)} vs {tuple(b.shape)} "
                                                             f"(dtype {a.dtype})")
            return True
        na, nb = _tensor_numpy(a), _tensor_numpy(b)
        st.nbytes += na.nbytes
        what = array_difference(na, nb)
        if what:
            if str(na.dtype) != str(a.dtype).removeprefix("torch."):  # e.g. bfloat16 shown as raw int16
                what += f" [raw bits of {a.dtype}]"
            self.report.diff(self.category, self.file, path, what)
        return True


def _tensor_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.contiguous()
    try:
        return t.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and friends: compare the raw bits
        raw = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.view(raw).numpy()


def compare_pt(rep: Report, rel: str, pa: Path, pb: Path) -> None:
    import torch

    st = rep.cat("checkpoints")
    st.files += 1
    loaded = []
    for p in (pa, pb):
        try:
            loaded.append(torch.load(p, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
            rep.diff("checkpoints", rel, "/", f"unreadable checkpoint {p}: {str(exc).splitlines()[0]}")
            return
    CheckpointComparer(rep, "checkpoints", rel, ignore_top={PT_PROVENANCE_KEY}).walk(*loaded)


# ---------------------------------------------------------------------------------------------
# tables and JSON
# ---------------------------------------------------------------------------------------------

def _cell(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _cells_equal(x: Any, y: Any) -> bool:
    x, y = _cell(x), _cell(y)
    x_na = x is None or (isinstance(x, float) and math.isnan(x)) or (x is not None and _is_na(x))
    y_na = y is None or (isinstance(y, float) and math.isnan(y)) or (y is not None and _is_na(y))
    if x_na or y_na:
        return x_na and y_na
    return _leaf_equal(x, y)


def _is_na(x: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def compare_csv(rep: Report, rel: str, pa: Path, pb: Path, ignore: list[re.Pattern]) -> None:
    import pandas as pd

    st = rep.cat("tables")
    st.files += 1
    try:
        ta, tb = pd.read_csv(pa), pd.read_csv(pb)
    except Exception as exc:  # noqa: BLE001 - pandas parser errors
        rep.diff("tables", rel, "/", f"unreadable CSV: {str(exc).splitlines()[0]}")
        return
    st.nbytes += pa.stat().st_size

    def kept(cols: Any) -> list[str]:
        return [c for c in cols if not any(p.search(str(c)) for p in ignore)]

    ca, cb = kept(ta.columns), kept(tb.columns)
    for c in ca:
        if c not in cb:
            rep.diff("tables", rel, f"column {c!r}", "column only in A")
    for c in cb:
        if c not in ca:
            rep.diff("tables", rel, f"column {c!r}", "column only in B")
    if len(ta) != len(tb):
        rep.diff("tables", rel, "rows", f"{len(ta)} rows vs {len(tb)}")
    common = [c for c in ca if c in cb]
    for c in common:
        st.arrays += 1
        if ta[c].dtype != tb[c].dtype:
            rep.diff("tables", rel, f"column {c!r}", f"dtype {ta[c].dtype} vs {tb[c].dtype}")
    n = min(len(ta), len(tb))
    st.values += n * len(common)
    first = None
    n_bad = 0
    bad_cols = []
    for j, c in enumerate(common):
        xa, xb = ta[c].tolist()[:n], tb[c].tolist()[:n]
        rows = [i for i in range(n) if not _cells_equal(xa[i], xb[i])]
        if rows:
            n_bad += len(rows)
            bad_cols.append(c)
            if first is None or (rows[0], j) < (first[0], first[1]):
                first = (rows[0], j, c, xa[rows[0]], xb[rows[0]])
    if first is not None:
        i, _, c, x, y = first
        sizes = "".join(f"; {c}{magnitude(ta[c].to_numpy()[:n], tb[c].to_numpy()[:n])}" for c in bad_cols
                        if ta[c].dtype.kind in "fiu" and tb[c].dtype.kind in "fiu")
        rep.diff("tables", rel, f"row {i}, column {c!r}",
                 f"A={_short(_cell(x))} B={_short(_cell(y))} ({n_bad} differing cells in columns "
                 f"{', '.join(map(str, bad_cols))}{sizes})")


def compare_json(rep: Report, rel: str, pa: Path, pb: Path, ignore: set[str]) -> None:
    st = rep.cat("json")
    st.files += 1
    loaded = []
    for p in (pa, pb):
        try:
            text = p.read_text()
            loaded.append(json.loads(text))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            rep.diff("json", rel, "/", f"unreadable JSON {p}: {exc}")
            return
    st.nbytes += pa.stat().st_size
    TreeComparer(rep, "json", rel, ignore=ignore).walk(*loaded)


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------

def _category(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".h5"):
        return "h5"
    if name.endswith(".pt"):
        return "checkpoints"
    if name.endswith(".csv"):
        return "tables"
    if name in JSON_NAMES:
        return "json"
    return None


def scan(root: Path, rep: Report, count: bool) -> set[str]:
    """Relative paths of the comparable files under ``root`` (skipped/other files counted if ``count``)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if count:
            for d in dirnames:
                if d in SKIP_DIRS:
                    rep.skipped[f"files under {d}/"] += sum(len(fs) for _, _, fs in os.walk(Path(dirpath) / d))
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for fn in filenames:
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
            if fn.endswith(SKIP_SUFFIXES) or (fn.startswith(".") and fn.endswith(".tmp")):
                if count:
                    rep.skipped[_suffix(fn)] += 1
                continue
            if _category(rel) is None:
                if count:
                    rep.not_compared[_suffix(fn)] += 1
                continue
            found.add(rel)
    return found


def _suffix(fn: str) -> str:
    for s in SKIP_SUFFIXES:
        if fn.endswith(s):
            return s
    return Path(fn).suffix or fn


def compare_folders(a: Path, b: Path, rep: Report, tables_ignore: list[re.Pattern],
                    json_ignore: set[str]) -> None:
    fa, fb = scan(a, rep, count=True), scan(b, rep, count=False)
    for rel in sorted(fa | fb):
        cat = _category(rel)
        if rel not in fb or rel not in fa:
            rep.cat(cat)
            rep.diff(cat, rel, "/", f"file only in {'A' if rel in fa else 'B'}")
            continue
        pa, pb = a / rel, b / rel
        if cat == "h5":
            compare_h5(rep, rel, pa, pb, json_ignore)
        elif cat == "checkpoints":
            compare_pt(rep, rel, pa, pb)
        elif cat == "tables":
            compare_csv(rep, rel, pa, pb, tables_ignore)
        else:
            compare_json(rep, rel, pa, pb, json_ignore)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="first results folder")
    ap.add_argument("b", type=Path, help="second results folder")
    ap.add_argument("--tables-ignore", default=DEFAULT_TABLES_IGNORE, metavar="COLS",
                    help="comma-separated regular expressions; CSV columns whose name matches one "
                         "(case-insensitive search) are not compared; '' compares all "
                         f"(default: {DEFAULT_TABLES_IGNORE})")
    ap.add_argument("--json-ignore", default=DEFAULT_JSON_IGNORE, metavar="KEYS",
                    help="comma-separated keys dropped at any depth in metrics.json/estep_check.json "
                         f"and in JSON-string HDF5 attributes (default: {DEFAULT_JSON_IGNORE})")
    ap.add_argument("--max-diffs", type=int, default=10, metavar="N",
                    help="list at most N differences (default 10)")
    args = ap.parse_args(argv)
    for label, p in (("A", args.a), ("B", args.b)):
        if not p.is_dir():
            print(f"error: results folder {label} {p}: {'not a directory' if p.exists() else 'does not exist'}",
                  file=sys.stderr)
            return 2
    if args.max_diffs < 0:
        print("error: --max-diffs must be >= 0", file=sys.stderr)
        return 2
    try:
        tables_ignore = [re.compile(s.strip(), re.I) for s in args.tables_ignore.split(",") if s.strip()]
    except re.error as exc:
        print(f"error: --tables-ignore: bad pattern ({exc})", file=sys.stderr)
        return 2
    json_ignore = {s.strip() for s in args.json_ignore.split(",") if s.strip()}

    t0 = time.perf_counter()
    rep = Report(max_diffs=args.max_diffs)
    compare_folders(args.a, args.b, rep, tables_ignore, json_ignore)
    elapsed = time.perf_counter() - t0

    print(f"A: {args.a}\nB: {args.b}")
    labels = {"h5": ("HDF5", "datasets", "attr values"), "checkpoints": ("checkpoints", "tensors", "leaves"),
              "tables": ("tables", "columns", "cells"), "json": ("JSON", "-", "leaves")}
    for cat in ("h5", "checkpoints", "tables", "json"):
        s = rep.stats.get(cat, Stats())
        name, arr, val = labels[cat]
        arrays = "" if arr == "-" else f"{s.arrays} {arr}, "
        print(f"{name + ':':13s}{s.files} files, {arrays}{s.values} {val}, {_mb(s.nbytes)} compared, "
              f"{s.diffs} differences")
    print(f"ignored: table columns matching {','.join(p.pattern for p in tables_ignore) or '(none)'}; "
          f"JSON keys {','.join(sorted(json_ignore)) or '(none)'}; HDF5 root attribute "
          f"'{H5_PROVENANCE_ATTR}'; checkpoint key '{PT_PROVENANCE_KEY}'")
    if rep.skipped:
        print("skipped: " + ", ".join(f"{n} {s}" for s, n in sorted(rep.skipped.items())))
    if rep.not_compared:
        print("not compared (in A): " + ", ".join(f"{n} {s}" for s, n in sorted(rep.not_compared.items())))
    n_files = sum(s.files for s in rep.stats.values())
    n_arrays = sum(s.arrays for s in rep.stats.values())
    print(f"time: {elapsed:.1f} s")
    if rep.n_diffs == 0:
        print(f"IDENTICAL: {n_arrays} arrays in {n_files} files")
        return 0
    file, key, what = rep.diffs[0]
    print(f"first difference:\n  file: {file}\n  key:  {key}\n  what: {what}")
    if args.max_diffs:
        shown = rep.diffs[:args.max_diffs]
        print(f"differences ({len(shown)} of {rep.n_diffs} listed):")
        for file, key, what in shown:
            print(f"  {file} :: {key} :: {what}")
    if rep.largest is not None:
        r, d, file, key = rep.largest
        print(f"largest numeric difference: relative {r:.3g}, absolute {d:.3g} ({file} :: {key}); a different "
              f"processor's kernels alone give relative differences near float rounding (~1e-7 float32), "
              f"growing along EM iterations")
    print(f"DIFFERENT: {rep.n_diffs} differences in {len(rep.diff_files)} files "
          f"({n_arrays} arrays in {n_files} files compared)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
