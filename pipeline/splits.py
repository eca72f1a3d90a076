"""GTZAN-style split lists: which clip belongs to which split, and its genre.

Expected layout::

    <root>/<genre>/<genre>.00012.wav        (or .au, as GTZAN ships them)
    <root>/train_filtered.txt               one path per line, relative to <root>:
    <root>/valid_filtered.txt                   blues/blues.00029.wav
    <root>/test_filtered.txt

The genre of a clip is the first component of its listed path. Every problem in
the lists is collected before anything is raised, so one run shows all of them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

SPLITS = ("train", "valid", "test")
LIST_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt", "test": "test_filtered.txt"}

# GTZAN ships .au files, while the commonly used split lists name .wav files.
_FALLBACK_SUFFIXES = {".wav": (".au",)}

_HINTS = {
    "root": "Point the root at the dataset folder, or make a small demo set with "
            "`python -m pipeline.synthetic DIR` and use DIR as the root.",
    "list_missing": "Put the split list files ({files}) in the dataset root.",
    "list_unreadable": "Save the list as UTF-8 text, one relative path per line.",
    "empty": "A split list needs at least one path; regenerate it or restore the original.",
    "missing": "Check that the root is the folder that holds the genre folders, and that the "
               "listed files exist (a listed .wav may also be present as .au).",
    "escapes": "Write paths relative to the dataset root, e.g. blues/blues.00029.wav "
               "(no leading '/', drive letter or '..').",
    "no_genre": "Put each file in its genre folder and list it as <genre>/<file>, "
                "e.g. blues/blues.00029.wav.",
    "duplicate": "Remove the repeated lines.",
    "leakage": "A clip must be in one split only: remove it from all but one list, "
               "otherwise evaluation scores are inflated.",
}


class SplitListError(ValueError):
    """The dataset root or its split lists are unusable; the message lists every problem."""


@dataclass(frozen=True)
class Clip:
    """One listed clip.

    Attributes
    ----------
    split : str
        ``"train"``, ``"valid"`` or ``"test"``.
    listed : str
        Normalised posix path as listed, e.g. ``"blues/blues.00029.wav"``.
    path : Path
        Absolute path of the file on disk; may end in ``.au`` where the list says ``.wav``.
    label : str
        Genre, the first component of ``listed``.
    """

    split: str
    listed: str
    path: Path
    label: str


@dataclass(frozen=True)
class SplitLists:
    """The parsed split lists of one dataset root.

    Attributes
    ----------
    root : Path
        Absolute dataset root.
    labels : tuple of str
        Sorted unique genres used by the lists that were read.
    clips : dict
        Split name -> tuple of `Clip`, in list order.
    """

    root: Path
    labels: tuple[str, ...]
    clips: dict[str, tuple[Clip, ...]]

    def label_index(self, label: str) -> int:
        """Index of ``label`` in `labels`; ValueError listing the labels if unknown."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}; the split lists use: "
                             f"{', '.join(self.labels)}") from None

    def listed(self, split: str) -> list[str]:
        """The normalised listed paths of ``split``, in list order (input of fingerprints)."""
        if split not in self.clips:
            raise ValueError(f"split {split!r} was not read; read splits: {', '.join(self.clips)}")
        return [clip.listed for clip in self.clips[split]]


@dataclass(frozen=True)
class _Entry:
    """One non-blank line of a list file."""

    split: str
    line: int
    listed: str


@dataclass(frozen=True)
class _Problem:
    """One problem found in the lists; ``line`` is 0 for a whole-file problem."""

    split: str
    line: int
    kind: str  # key of _HINTS
    message: str


def read_split_lists(root, *, splits=SPLITS) -> SplitLists:
    """Read and check the split lists under ``root``.

    Parameters
    ----------
    root : str or Path
        Dataset folder holding the genre folders and the ``*_filtered.txt`` lists.
    splits : sequence of str
        Which splits to read (any of `SPLITS`). `SplitLists.labels` is derived
        from these lists only.

    Returns
    -------
    SplitLists

    Raises
    ------
    SplitListError
        Listing every problem found (missing root or list, empty list, missing
        file, path outside the root or without a genre folder, repeated line,
        clip in two splits) as ``<list file>:<line>: <problem>``, plus hints.
    ValueError
        If ``splits`` names an unknown split.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "jazz").mkdir()
    >>> for i, split in enumerate(SPLITS):
    ...     sf.write(root / "jazz" / f"jazz.0000{i}.wav", np.zeros(100), 22050)
    ...     _ = (root / LIST_FILES[split]).write_text(f"jazz/jazz.0000{i}.wav\\n")
    >>> lists = read_split_lists(root)
    >>> lists.labels, lists.listed("valid")
    (('jazz',), ['jazz/jazz.00001.wav'])
    """
    splits = _check_splits(splits)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SplitListError(_root_message(root))
    root = root.resolve()

    problems: list[_Problem] = []
    entries: dict[str, list[_Entry]] = {}
    for split in splits:
        entries[split] = _read_list(root, split, problems)

    numbered = {split: _check_entries(root, entries[split], problems) for split in splits}
    _check_duplicates(numbered, problems)

    if problems:
        raise SplitListError(_problems_message(root, problems))
    clips = {split: tuple(clip for _, clip in pairs) for split, pairs in numbered.items()}
    labels = tuple(sorted({clip.label for split_clips in clips.values() for clip in split_clips}))
    return SplitLists(root=root, labels=labels, clips=clips)


def _check_splits(splits) -> tuple[str, ...]:
    """Validate the requested split names; keep their order, drop repeats."""
    if isinstance(splits, str):
        splits = (splits,)
    unknown = [s for s in splits if s not in LIST_FILES]
    if unknown or not splits:
        raise ValueError(f"unknown or no splits {list(splits)!r}; choose from: {', '.join(SPLITS)}")
    return tuple(dict.fromkeys(splits))


def _root_message(root: Path) -> str:
    what = "is not a folder" if root.exists() else "does not exist"
    return (f"dataset root {root} {what}.\n"
            f"Expected <root>/<genre>/<genre>.00012.wav (or .au) plus "
            f"{', '.join(LIST_FILES.values())} in <root>.\n"
            f"Hint: {_HINTS['root']}")


def _read_list(root: Path, split: str, problems: list) -> list[_Entry]:
    """Non-blank, stripped lines of one list file; records a missing/empty/unreadable list."""
    name = LIST_FILES[split]
    path = root / name
    if not path.is_file():
        problems.append(_Problem(split, 0, "list_missing", f"{name}: list file not found (expected {path})"))
        return []
    try:
        # utf-8-sig drops a BOM; splitlines() handles CRLF and lone CR line ends.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(_Problem(split, 0, "list_unreadable", f"{name}: cannot read list file ({exc})"))
        return []
    entries = [_Entry(split, number, line.strip())
               for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not entries:
        problems.append(_Problem(split, 0, "empty", f"{name}: the list is empty (no paths)"))
    return entries


def _normalise(listed: str) -> tuple[str | None, str | None]:
    """``(posix path, None)`` for a usable listed path, else ``(None, problem key)``."""
    text = listed.replace("\\", "/")  # lists written on Windows
    if PurePosixPath(text).is_absolute() or PureWindowsPath(listed).drive:
        return None, "escapes"
    parts = PurePosixPath(text).parts
    if ".." in parts:
        return None, "escapes"
    if len(parts) < 2:
        return None, "no_genre"
    return PurePosixPath(*parts).as_posix(), None


def _resolve(root: Path, listed: str) -> Path | None:
    """The file a listed path refers to, trying GTZAN's .au for a missing .wav."""
    path = root / listed
    if path.is_file():
        return path
    for suffix in _FALLBACK_SUFFIXES.get(path.suffix.lower(), ()):
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    return None


def _check_entries(root: Path, entries: list[_Entry], problems: list) -> list[tuple[int, Clip]]:
    """``(line number, clip)`` of the usable entries; problems for the others."""
    clips = []
    for entry in entries:
        where = f"{LIST_FILES[entry.split]}:{entry.line}"
        listed, problem = _normalise(entry.listed)
        if problem == "escapes":
            problems.append(_Problem(entry.split, entry.line, problem,
                                     f"{where}: path {entry.listed!r} points outside the dataset root"))
            continue
        if problem == "no_genre":
            problems.append(_Problem(entry.split, entry.line, problem,
                                     f"{where}: path {entry.listed!r} has no genre folder"))
            continue
        path = _resolve(root, listed)
        if path is None:
            tried = " (also tried .au)" if PurePosixPath(listed).suffix.lower() == ".wav" else ""
            problems.append(_Problem(entry.split, entry.line, "missing",
                                     f"{where}: file not found: {listed}{tried}"))
            continue
        clip = Clip(split=entry.split, listed=listed, path=path, label=listed.split("/")[0])
        clips.append((entry.line, clip))
    return clips


def _check_duplicates(numbered: dict[str, list[tuple[int, Clip]]], problems: list) -> None:
    """Record files listed twice in one list, and files listed in two splits."""
    # The on-disk file is the key, so blues/x.wav and blues/x.au count as one clip.
    seen: dict[Path, tuple[str, int]] = {}
    for split, pairs in numbered.items():
        for line, clip in pairs:
            where = f"{LIST_FILES[split]}:{line}"
            if clip.path not in seen:
                seen[clip.path] = (split, line)
                continue
            other_split, other_line = seen[clip.path]
            other = f"{LIST_FILES[other_split]}:{other_line}"
            if other_split == split:
                problems.append(_Problem(split, line, "duplicate",
                                         f"{where}: {clip.listed} is listed twice (also at {other})"))
            else:
                problems.append(_Problem(split, line, "leakage",
                                         f"{where}: {clip.listed} is also in {other} "
                                         f"(leakage between {other_split} and {split})"))


def _problems_message(root: Path, problems: list[_Problem]) -> str:
    problems = sorted(problems, key=lambda p: (SPLITS.index(p.split), p.line))
    counts = Counter(p.kind for p in problems)
    lines = [f"split lists in {root} have {len(problems)} problem(s):"]
    lines += [f"  {p.message}" for p in problems]
    if counts["missing"]:
        lines.append(f"{counts['missing']} listed file(s) do not exist.")
    lines.append("How to fix:")
    for key in counts:
        lines.append("  - " + _HINTS[key].format(files=", ".join(LIST_FILES.values())))
    return "\n".join(lines)
