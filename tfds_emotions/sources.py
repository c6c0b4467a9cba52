"""Finding the videos in a user's copy of a dataset, in any of the layouts of SPEC §1.

Discovery only lists what is there (`Item`s keyed `Class/id`) and what cannot be used (`Skip`s with a
reason); nothing is decoded here. Keys, not bare ids, identify videos because the same id can appear
under two classes. Every list is sorted, so discovery is independent of file-system order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence

from tfds_emotions import media
from tfds_emotions.classes import canonical_class

# Files that describe a dataset rather than being part of it; never reported as "not a video".
_METADATA_EXTENSIONS = (".txt", ".json", ".csv", ".xlsx", ".xls", ".md", ".parquet", ".py")
# Files at the root that belong to split files (UCF101-style lists and classInd.txt, ActivityNet JSON).
_SPLIT_FILE = re.compile(r"(?i)^((train|test)list\d+|classind)\.txt$|\.json$")


@dataclasses.dataclass(frozen=True)
class Item:
    """One video to turn into an example.

    kind is "video" (path is a video file), "frames" (path is a folder of JPEG frames, audio_path an
    optional mp3) or "parquet" (path is a shard, row the row index, column the bytes column).
    """

    key: str
    label: str
    kind: str
    path: str
    audio_path: str | None = None
    row: int = -1
    column: str = ""


@dataclasses.dataclass(frozen=True)
class Skip:
    """Something found in the manual directory that does not become an example, and why."""

    key: str
    reason: str
    detail: str = ""


def make_key(label: str, video_id: str) -> str:
    return f"{label}/{video_id}"


def _walk_files(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield os.path.join(dirpath, f)


def discover_videos(root: str, classes: Sequence[str]) -> tuple[list[Item], list[Skip]]:
    """Raw layout: `<root>/.../<Class>/<id>.<ext>`; the class is the video's parent folder."""
    items, skips = [], []
    for path in _walk_files(root):
        rel = os.path.relpath(path, root)
        ext = os.path.splitext(path)[1].lower()
        at_root = os.path.dirname(rel) == ""
        if ext in _METADATA_EXTENSIONS:
            if at_root and not _SPLIT_FILE.match(os.path.basename(path)):  # Nothing reads it: say so.
                skips.append(Skip(rel, "not_a_video", f"extension {ext}, not a split file"))
            continue
        parent = os.path.basename(os.path.dirname(path))
        if ext not in media.VIDEO_EXTENSIONS:
            skips.append(Skip(rel, "not_a_video", f"extension {ext or '(none)'}"))
            continue
        if at_root:
            skips.append(Skip(rel, "not_in_a_class_folder", "videos go in <root>/<Class>/"))
            continue
        label = canonical_class(parent, tuple(classes))
        if label is None:
            skips.append(Skip(rel, "unknown_class", f"folder {parent!r} is not one of {list(classes)}"))
            continue
        items.append(Item(make_key(label, os.path.splitext(os.path.basename(path))[0]), label, "video", path))
    return items, skips


_FRAME_DIRS = {"img": "mp3", "imgs": "mp3", "frames": "mp3"}  # Peer repositories' names (VE-8, Ekman-6).


def find_processed_layout(root: str) -> tuple[str, str | None] | None:
    """(frames_root, audio_root) of a processed layout, if `root` holds one: the authors' `X_imgs/` +
    `X_mp3/`, or `img/` (or `imgs/`, `frames/`) + `mp3/` as peer code lays out VE-8 and Ekman-6."""
    for name in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, name)):
            continue
        if name.endswith("_imgs"):
            audio = name[: -len("_imgs")] + "_mp3"
        elif name.lower() in _FRAME_DIRS:
            audio = _FRAME_DIRS[name.lower()]
        else:
            continue
        audio = os.path.join(root, audio)
        return os.path.join(root, name), audio if os.path.isdir(audio) else None
    return None


def discover_frame_folders(
    frames_root: str, audio_root: str | None, classes: Sequence[str]
) -> tuple[list[Item], list[Skip]]:
    """Processed layout: `<frames_root>/<Class>/<id>/000001.jpg ...` and `<audio_root>/<Class>/<id>.mp3`."""
    items, skips = [], []
    for cls_dir in sorted(os.listdir(frames_root)):
        full = os.path.join(frames_root, cls_dir)
        if not os.path.isdir(full) or cls_dir.startswith("."):
            continue
        label = canonical_class(cls_dir, tuple(classes))
        for vid in sorted(os.listdir(full)):
            if not os.path.isdir(os.path.join(full, vid)):
                continue
            if label is None:
                skips.append(Skip(f"{cls_dir}/{vid}", "unknown_class", f"folder {cls_dir!r}"))
                continue
            audio = None
            if audio_root is not None:
                candidate = os.path.join(audio_root, cls_dir, vid + ".mp3")
                audio = candidate if os.path.exists(candidate) else None
            items.append(Item(make_key(label, vid), label, "frames", os.path.join(full, vid), audio_path=audio))
    return items, skips


def frame_files(folder: str) -> list[str]:
    """The JPEG frames of one processed-layout video in temporal (numeric) order."""
    names = [f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    return [os.path.join(folder, f) for f in sorted(names, key=lambda n: (len(n), n))]


# ---------------------------------------------------------------------------------------------------------
# Parquet shards (how the public release is distributed).

_BYTES_COLUMNS = ("video_data", "video", "video_bytes", "bytes", "mp4", "content")
_LABEL_COLUMNS = ("label", "emotion", "category", "class", "labels", "class_name")
_ID_COLUMNS = ("video_id", "id", "vid", "name", "file_name", "filename", "video_name", "path")


def _pick(names: Sequence[str], wanted: Sequence[str], explicit: str | None, what: str, path: str) -> str | None:
    if explicit:
        if explicit not in names:
            raise ValueError(f"{path}: no {what} column {explicit!r}; columns are {list(names)}")
        return explicit
    lower = {n.lower(): n for n in names}
    return next((lower[w] for w in wanted if w in lower), None)


def _hf_label_names(schema, label_col: str) -> list[str] | None:
    """Class names of an integer label column, from Hugging Face's schema metadata when present."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    feature = json.loads(meta).get("info", {}).get("features", {}).get(label_col, {})
    return feature.get("names")


def discover_parquet(
    root: str,
    classes: Sequence[str],
    *,
    video_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
) -> tuple[list[Item], list[Skip]]:
    """Rows of every `*.parquet` under root; only the label and id columns are read here."""
    import pyarrow.parquet as pq

    items, skips = [], []
    shards = [p for p in _walk_files(root) if p.endswith(".parquet")]
    for shard in shards:
        pf = pq.ParquetFile(shard)
        names = pf.schema_arrow.names
        vcol = _pick(names, _BYTES_COLUMNS, video_column, "video", shard)
        lcol = _pick(names, _LABEL_COLUMNS, label_column, "label", shard)
        icol = _pick(names, _ID_COLUMNS, id_column, "id", shard)
        if vcol is None or lcol is None:
            raise ValueError(
                f"{shard}: cannot tell which columns hold the video bytes and the label (columns: {names}); "
                "pass --video_column and --label_column"
            )
        table = pf.read(columns=[c for c in (lcol, icol) if c])
        labels = table.column(lcol).to_pylist()
        ids = table.column(icol).to_pylist() if icol else [None] * len(labels)
        label_names = _hf_label_names(pf.schema_arrow, lcol)
        stem = os.path.splitext(os.path.basename(shard))[0]
        for row, (raw_label, raw_id) in enumerate(zip(labels, ids, strict=True)):
            vid = os.path.splitext(os.path.basename(str(raw_id)))[0] if raw_id is not None else f"{stem}-{row:06d}"
            if isinstance(raw_label, int):
                names_for_int = label_names or list(classes)
                raw_label = names_for_int[raw_label] if 0 <= raw_label < len(names_for_int) else str(raw_label)
            label = canonical_class(str(raw_label), tuple(classes)) if raw_label is not None else None
            if label is None:
                skips.append(Skip(f"{raw_label}/{vid}", "unknown_class", f"{os.path.basename(shard)} row {row}"))
                continue
            items.append(Item(make_key(label, vid), label, "parquet", shard, row=row, column=vcol))
    return items, skips


def read_parquet_bytes(shard: str, column: str, rows: Sequence[int]) -> Iterator[tuple[int, bytes | None]]:
    """(row, video bytes) for the wanted rows of a shard, reading one row group at a time."""
    import pyarrow.parquet as pq

    wanted = set(rows)
    pf = pq.ParquetFile(shard)
    offset = 0
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if any(offset <= r < offset + n for r in wanted):
            values = pf.read_row_group(rg, columns=[column]).column(column).to_pylist()
            for i, v in enumerate(values):
                if offset + i in wanted:
                    yield offset + i, (v.get("bytes") if isinstance(v, dict) else v)
        offset += n


# ---------------------------------------------------------------------------------------------------------
# Split files.


@dataclasses.dataclass
class SplitLists:
    """Keys named by the user's split files: `pools` maps "train"/"test" to keys in file order."""

    pools: dict[str, list[str]]
    source: str


def _strip_ext(name: str) -> str:
    base, ext = os.path.splitext(name)
    return base if ext.lower() in media.VIDEO_EXTENSIONS + (".mp3",) else name


def _normalise_key(entry: str, classes: Sequence[str]) -> str | None:
    cls, _, vid = entry.strip().replace("\\", "/").rpartition("/")
    cls = cls.rsplit("/", 1)[-1]
    label = canonical_class(cls, tuple(classes))
    return make_key(label, _strip_ext(vid)) if label and vid else None


def read_ucf_lists(root: str, classes: Sequence[str], split_number: int = 1) -> SplitLists | None:
    """UCF101-style `trainlistNN.txt` ("Class/id 1") and `testlistNN.txt` ("Class/id"), if present."""
    found = {}
    for path in _walk_files(root):
        m = re.fullmatch(r"(train|test)list0*(\d+)\.txt", os.path.basename(path).lower())
        if m and int(m.group(2)) == split_number:
            found[m.group(1)] = path
    if not found:
        return None
    if set(found) != {"train", "test"}:
        raise ValueError(f"split {split_number:02d}: found only {sorted(found.values())}; need train and test lists")
    pools = {}
    for split, path in sorted(found.items()):
        keys = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                key = _normalise_key(line.split()[0], classes)
                if key is None:
                    raise ValueError(f"{path}:{n}: {line.strip()!r} does not name a known class {list(classes)}")
                keys.append(key)
        pools[split] = keys
    return SplitLists(pools, f"{found['train']}, {found['test']}")


def _trailing_number(path: str) -> int | None:
    m = re.search(r"(\d+)$", os.path.splitext(os.path.basename(path))[0])
    return int(m.group(1)) if m else None


def read_activitynet_json(root: str, classes: Sequence[str], split_number: int = 1) -> SplitLists | None:
    """ActivityNet-style annotation JSON ({"labels": [...], "database": {...}}), if present.

    Its "training" subset becomes the train pool; "validation" and "testing" become test, because peer
    code (VAANet, CTEN) names its test set "validation". Our validation split is carved from train.
    With several such files (one per split, e.g. `ve8_01.json` ... `ve8_10.json`) the one whose name ends
    in `split_number` is read; a single file serves split 1.
    """
    found = {}
    for path in _walk_files(root):
        if not path.lower().endswith(".json"):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "database" in data:
            found[path] = data
    if len(found) > 1:
        numbered = {p: d for p, d in found.items() if _trailing_number(p) == split_number}
        if len(numbered) != 1:
            raise ValueError(
                f"split {split_number:02d}: {len(numbered)} of the annotation files {sorted(found)} end in that number"
            )
        found = numbered
    elif split_number != 1 and found and _trailing_number(next(iter(found))) != split_number:
        raise ValueError(f"split {split_number:02d}: the only annotation file is {next(iter(found))}")
    for path, data in found.items():
        pools = {"train": [], "test": []}
        for vid, entry in sorted(data["database"].items()):
            label = canonical_class(str(entry.get("annotations", {}).get("label", "")), tuple(classes))
            if label is None:
                raise ValueError(f"{path}: video {vid!r} has unknown label {entry.get('annotations')!r}")
            subset = entry.get("subset", "")
            pool = "train" if subset == "training" else "test" if subset in ("validation", "testing") else None
            if pool is None:
                raise ValueError(f"{path}: video {vid!r} has unknown subset {subset!r}")
            pools[pool].append(make_key(label, _strip_ext(vid.rsplit("/", 1)[-1])))
        return SplitLists(pools, path)
    return None


_SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test"}


def read_split_folders(root: str, items: Sequence[Item]) -> SplitLists | None:
    """Pools from a `<root>/train/<Class>/...` + `<root>/test/<Class>/...` layout, if the videos lie so."""
    pools: dict[str, list[str]] = {"train": [], "test": []}
    for it in items:
        top = os.path.relpath(it.path, root).split(os.sep)[0].lower()
        if top in _SPLIT_FOLDERS:
            pools[_SPLIT_FOLDERS[top]].append(it.key)
    if not pools["train"] or not pools["test"]:
        return None
    return SplitLists(pools, f"{root}/{{train,test}}/ folders")


def read_split_files(root: str, items: Sequence[Item], classes: Sequence[str], split_number: int) -> SplitLists | None:
    """The user's split definition, first found of: UCF101-style lists, ActivityNet JSON, split folders."""
    return (
        read_ucf_lists(root, classes, split_number)
        or read_activitynet_json(root, classes, split_number)
        or (read_split_folders(root, items) if split_number == 1 else None)
    )
