"""GTZAN-style split lists: which clip belongs to which split, its genre and its group.

Expected layout::

    <root>/<genre>/<genre>.00012.wav        (or .au, as GTZAN ships them)
    <root>/train_filtered.txt               one path per line, relative to <root>:
    <root>/valid_filtered.txt                   blues/blues.00029.wav
    <root>/test_filtered.txt
    <root>/tracks.tsv                       optional: <listed path><TAB><group id>, one line per clip

The genre of a clip is the first component of its listed path. Every problem in
the lists is collected before anything is raised, so one run shows all of them.

Groups
------
``tracks.tsv`` (optional) gives every listed clip a group: the recording it was cut
from, or its album or artist — any id that says "these clips must stay on one side
of a split". When it is there, every listed clip must have exactly one group, every
line must name a listed clip, and **a group in two splits is refused as leakage**,
like a file in two splits. GTZAN users with an artist list (artist per clip) can put
it here to check that their split is artist-filtered. The file takes the lists'
tolerance (BOM, CRLF, blank lines, stray spaces around the fields, a ``.wav`` that
exists as ``.au``); group ids may contain spaces but not tabs. When only some splits
are read, only those are checked, and a line naming a clip of an unread split is not
an error.

Paths and symbolic links
------------------------
A listed path (in a list or in ``tracks.tsv``) must stay *lexically* inside the root:
no leading ``/``, no drive letter, no ``..`` component. Symbolic links inside the
root are followed wherever they point (whoever can make a link in the root already
decides what the data is), so a genre folder may be a link to another disk; this is
how ``bench/cv_folds.py`` makes fold folders without copying audio. A link whose
target is missing counts as a missing file, and the message names the broken link
and its target. Two listed paths that reach one file through links are one clip
(listed twice, or leakage if in two splits).
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from common.errors import UserError

SPLITS = ("train", "valid", "test")
LIST_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt", "test": "test_filtered.txt"}
GROUPS_FILE = "tracks.tsv"

# GTZAN ships .au files, while the commonly used split lists name .wav files.
_FALLBACK_SUFFIXES = {".wav": (".au",)}
# How many clips of a leaking group the message names per split.
_EXAMPLES = 3
_GROUPS_LINE = "'<listed path><TAB><group id>' line"

_HINTS = {
    "root": "Point the root at the dataset folder, or make a small demo set with "
            "`python -m synthetic DIR` and use DIR as the root.",
    "list_missing": "Put the split list files ({files}) in the dataset root.",
    "list_unreadable": "Save the list as UTF-8 text, one relative path per line.",
    "empty": "A split list needs at least one path; regenerate it or restore the original.",
    "missing": "Check that the root is the folder that holds the genre folders, and that the "
               "listed files exist (a listed .wav may also be present as .au).",
    "broken_link": "Repair the broken symbolic link (`ls -l` shows where it points) or restore its "
                   "target; links inside the root are followed wherever they point.",
    "escapes": "Write paths relative to the dataset root, e.g. blues/blues.00029.wav "
               "(no leading '/', drive letter or '..').",
    "no_genre": "Put each file in its genre folder and list it as <genre>/<file>, "
                "e.g. blues/blues.00029.wav.",
    "duplicate": "Remove the repeated lines.",
    "leakage": "A clip must be in one split only: remove it from all but one list, "
               "otherwise evaluation scores are inflated.",
    "groups_unreadable": f"Save {GROUPS_FILE} as UTF-8 text, one {_GROUPS_LINE} per clip.",
    "groups_empty": f"Give every listed clip a group in {GROUPS_FILE} (one {_GROUPS_LINE} per clip), "
                    f"or delete {GROUPS_FILE} if the set has no groups.",
    "groups_malformed": f"Write one {_GROUPS_LINE} per clip, e.g. 'blues/blues.00029.wav<TAB>artist 12', "
                        f"the path relative to the dataset root as in the lists.",
    "groups_unlisted": f"Every line of {GROUPS_FILE} must name a clip of a split list: correct the path "
                       f"or remove the line.",
    "groups_conflict": "Give each clip one group: correct or remove the conflicting line.",
    "groups_missing": f"Add a {_GROUPS_LINE} to {GROUPS_FILE} for each of these clips (a clip that shares "
                      f"its recording with no other may use its own path as its group).",
    "group_leakage": "All clips of a group (track, album or artist) must be in one split: move them to "
                     "one list, otherwise a model is scored on recordings it was trained on and the "
                     "scores are inflated.",
}


class SplitListError(UserError):
    """The dataset root, its split lists or its groups file are unusable; the message lists every problem."""


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
        Absolute path of the file inside the root (links not resolved); may end in
        ``.au`` where the list says ``.wav``.
    label : str
        Genre, the first component of ``listed``.
    group : str or None
        The clip's group from ``tracks.tsv`` (track, album, artist), or None when the
        root has no groups file.
    """

    split: str
    listed: str
    path: Path
    label: str
    group: str | None = None


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
    groups_file : Path or None
        The ``tracks.tsv`` that gave every clip its group, or None without one.
    """

    root: Path
    labels: tuple[str, ...]
    clips: dict[str, tuple[Clip, ...]]
    groups_file: Path | None = None

    @property
    def has_groups(self) -> bool:
        """True when every clip has a group (the root has a ``tracks.tsv``)."""
        return self.groups_file is not None

    def label_index(self, label: str) -> int:
        """Index of ``label`` in `labels`; ValueError listing the labels if unknown."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}; the split lists use: "
                             f"{', '.join(self.labels)}") from None

    def listed(self, split: str) -> list[str]:
        """The normalised listed paths of ``split``, in list order (input of fingerprints)."""
        return [clip.listed for clip in self._split(split)]

    def groups(self, split: str) -> list[str | None]:
        """The groups of ``split``'s clips, in list order (all None without a groups file)."""
        return [clip.group for clip in self._split(split)]

    def _split(self, split: str) -> tuple[Clip, ...]:
        if split not in self.clips:
            raise ValueError(f"split {split!r} was not read; read splits: {', '.join(self.clips)}")
        return self.clips[split]


@dataclass(frozen=True)
class _Entry:
    """One non-blank line of a list file."""

    split: str
    line: int
    listed: str


@dataclass(frozen=True)
class _Listed:
    """One usable listed clip: where it was listed and the file it is (links resolved)."""

    line: int
    clip: Clip
    real: str


@dataclass(frozen=True)
class _Problem:
    """One problem found; ``source`` is a split or ``"groups"``, ``line`` 0 for a whole-file problem."""

    source: str
    line: int
    kind: str  # key of _HINTS
    message: str


# Problems are printed in file order: the three lists, then tracks.tsv, then whole groups.
_SOURCE_ORDER = {**{split: i for i, split in enumerate(SPLITS)}, "groups": len(SPLITS),
                 "group_leakage": len(SPLITS) + 1}


def read_split_lists(root, *, splits=SPLITS) -> SplitLists:
    """Read and check the split lists (and ``tracks.tsv``, if any) under ``root``.

    Parameters
    ----------
    root : str or Path
        Dataset folder holding the genre folders and the ``*_filtered.txt`` lists.
    splits : sequence of str
        Which splits to read (any of `SPLITS`). `SplitLists.labels` is derived
        from these lists only, and only these are checked against ``tracks.tsv``.

    Returns
    -------
    SplitLists

    Raises
    ------
    SplitListError
        Listing every problem found (missing root or list, empty list, missing
        file or broken link, path outside the root or without a genre folder,
        repeated line, clip in two splits; in ``tracks.tsv``: a malformed line, a
        line naming no listed clip, a clip given two groups, a listed clip without
        a group, a group in two splits) as ``<file>:<line>: <problem>``, plus hints.
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
    >>> lists.labels, lists.listed("valid"), lists.has_groups
    (('jazz',), ['jazz/jazz.00001.wav'], False)
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

    listed = {split: _check_entries(root, entries[split], problems) for split in splits}
    _check_duplicates(listed, problems)
    groups_file, groups = _read_groups(root, entries, listed, problems, every_split=set(splits) == set(SPLITS))
    if groups is not None:
        _check_group_leakage(listed, groups, problems)

    if problems:
        raise SplitListError(_problems_message(root, problems))
    clips = {split: tuple(_with_group(item, groups) for item in items) for split, items in listed.items()}
    labels = tuple(sorted({clip.label for split_clips in clips.values() for clip in split_clips}))
    return SplitLists(root=root, labels=labels, clips=clips, groups_file=groups_file)


def _with_group(item: _Listed, groups: dict[str, str] | None) -> Clip:
    return item.clip if groups is None else dataclasses.replace(item.clip, group=groups[item.real])


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


def _read_text(path: Path) -> str:
    """A list's text: utf-8-sig drops a BOM; callers' splitlines() handles CRLF and lone CR."""
    return path.read_text(encoding="utf-8-sig")


def _read_list(root: Path, split: str, problems: list) -> list[_Entry]:
    """Non-blank, stripped lines of one list file; records a missing/empty/unreadable list."""
    name = LIST_FILES[split]
    path = root / name
    if not path.is_file():
        problems.append(_Problem(split, 0, "list_missing", f"{name}: list file not found (expected {path})"))
        return []
    try:
        text = _read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(_Problem(split, 0, "list_unreadable", f"{name}: cannot read list file ({exc})"))
        return []
    entries = [_Entry(split, number, line.strip())
               for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not entries:
        problems.append(_Problem(split, 0, "empty", f"{name}: the list is empty (no paths)"))
    return entries


def _normalise(listed: str) -> tuple[str | None, str | None]:
    """``(posix path, None)`` for a usable listed path, else ``(None, problem key)``.

    Lexical only: a path must not leave the root by its spelling; symbolic links
    inside the root are the root owner's choice and are followed (module docstring).
    """
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


def _broken_link(root: Path, listed: str) -> tuple[str, str] | None:
    """``(link, its target)`` of the first broken symbolic link on the way to ``listed``, if any."""
    path = root
    for part in PurePosixPath(listed).parts:
        path = path / part
        if path.is_symlink() and not path.exists():  # dangling, or a loop
            return path.relative_to(root).as_posix(), os.readlink(path)
        if not path.exists():
            return None
    return None


def _missing_problem(root: Path, entry: _Entry, listed: str) -> _Problem:
    where = f"{LIST_FILES[entry.split]}:{entry.line}"
    suffix = PurePosixPath(listed).suffix
    spellings = [listed] + [listed[:len(listed) - len(suffix)] + other
                            for other in _FALLBACK_SUFFIXES.get(suffix.lower(), ())]
    broken = next(filter(None, (_broken_link(root, spelling) for spelling in spellings)), None)
    if broken is not None:
        link, target = broken
        return _Problem(entry.split, entry.line, "broken_link",
                        f"{where}: file not found: {listed} ({link} is a broken symbolic link to "
                        f"{target!r}, which does not exist)")
    tried = " (also tried .au)" if PurePosixPath(listed).suffix.lower() == ".wav" else ""
    return _Problem(entry.split, entry.line, "missing", f"{where}: file not found: {listed}{tried}")


def _check_entries(root: Path, entries: list[_Entry], problems: list) -> list[_Listed]:
    """The usable entries as clips; problems for the others."""
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
            problems.append(_missing_problem(root, entry, listed))
            continue
        clip = Clip(split=entry.split, listed=listed, path=path, label=listed.split("/")[0])
        clips.append(_Listed(entry.line, clip, os.path.realpath(path)))
    return clips


def _check_duplicates(listed: dict[str, list[_Listed]], problems: list) -> None:
    """Record files listed twice in one list, and files listed in two splits."""
    # The file reached (links resolved) is the key, so blues/x.wav and blues/x.au, or two
    # spellings through links, count as one clip.
    seen: dict[str, tuple[str, int]] = {}
    for split, items in listed.items():
        for item in items:
            where = f"{LIST_FILES[split]}:{item.line}"
            if item.real not in seen:
                seen[item.real] = (split, item.line)
                continue
            other_split, other_line = seen[item.real]
            other = f"{LIST_FILES[other_split]}:{other_line}"
            if other_split == split:
                problems.append(_Problem(split, item.line, "duplicate",
                                         f"{where}: {item.clip.listed} is listed twice (also at {other})"))
            else:
                problems.append(_Problem(split, item.line, "leakage",
                                         f"{where}: {item.clip.listed} is also in {other} "
                                         f"(leakage between {other_split} and {split})"))


# -- groups (tracks.tsv) -----------------------------------------------------------------
@dataclass(frozen=True)
class _GroupLine:
    """One usable line of the groups file."""

    line: int
    listed: str
    group: str


def _read_groups(root: Path, entries: dict[str, list[_Entry]], listed: dict[str, list[_Listed]],
                 problems: list, *, every_split: bool) -> tuple[Path | None, dict[str, str] | None]:
    """``(groups file, {real path of a listed clip: group})``, or ``(None, None)`` without a file.

    Records a problem for every malformed line, line naming no listed clip (only when
    ``every_split`` was read: otherwise it may name a clip of an unread split), clip
    given two groups and listed clip given none.
    """
    path = root / GROUPS_FILE
    if not path.exists() and not path.is_symlink():
        return None, None
    lines = _read_group_lines(root, path, problems)
    if lines is None:
        return path, None
    if not lines:
        problems.append(_Problem("groups", 0, "groups_empty",
                                 f"{GROUPS_FILE}: the groups file has no lines, so no listed clip has a group"))
        return path, None

    by_listed = {item.clip.listed: item for items in listed.values() for item in items}
    by_real = {item.real: item for items in listed.values() for item in items}
    # Listed paths whose file has a problem of its own: a groups line naming one is fine.
    named = {_normalise(e.listed)[0] for split_entries in entries.values() for e in split_entries}
    assigned: dict[str, tuple[str, int]] = {}
    for row in lines:
        item = by_listed.get(row.listed) or _clip_reached(root, row.listed, by_real)
        where = f"{GROUPS_FILE}:{row.line}"
        if item is None:
            if every_split and row.listed not in named:
                problems.append(_Problem("groups", row.line, "groups_unlisted",
                                         f"{where}: {row.listed} is in no split list"))
            continue
        if item.real not in assigned:
            assigned[item.real] = (row.group, row.line)
            continue
        first_group, first_line = assigned[item.real]
        if first_group != row.group:  # the same line twice is harmless
            problems.append(_Problem("groups", row.line, "groups_conflict",
                                     f"{where}: {row.listed} is given group {row.group!r}, but "
                                     f"{GROUPS_FILE}:{first_line} gives it {first_group!r}"))
    for split, items in listed.items():
        for item in items:
            if item.real not in assigned:
                problems.append(_Problem(split, item.line, "groups_missing",
                                         f"{LIST_FILES[split]}:{item.line}: {item.clip.listed} has no group "
                                         f"in {GROUPS_FILE}"))
    return path, {real: group for real, (group, _) in assigned.items()}


def _clip_reached(root: Path, listed: str, by_real: dict[str, _Listed]) -> _Listed | None:
    """The listed clip whose file ``listed`` reaches (e.g. ``x.au`` for a listed ``x.wav``)."""
    path = _resolve(root, listed)
    return None if path is None else by_real.get(os.path.realpath(path))


def _read_group_lines(root: Path, path: Path, problems: list) -> list[_GroupLine] | None:
    """The usable lines of the groups file (None if unreadable); problems for malformed ones."""
    if not path.is_file():
        broken = path.is_symlink() and not path.exists()
        why = (f"is a broken symbolic link to {os.readlink(path)!r}" if broken else "is not a file")
        problems.append(_Problem("groups", 0, "groups_unreadable", f"{GROUPS_FILE}: the groups file {path} {why}"))
        return None
    try:
        text = _read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(_Problem("groups", 0, "groups_unreadable",
                                 f"{GROUPS_FILE}: cannot read the groups file ({exc})"))
        return None
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        row, why = _parse_group_line(raw)
        if why:
            problems.append(_Problem("groups", number, "groups_malformed", f"{GROUPS_FILE}:{number}: {why}"))
            continue
        rows.append(_GroupLine(number, *row))
    return rows


def _parse_group_line(raw: str) -> tuple[tuple[str, str] | None, str | None]:
    """``((listed path, group), None)`` for a usable line, else ``(None, why)``."""
    fields = [field.strip() for field in raw.split("\t")]
    while fields and not fields[-1]:  # trailing tabs or spaces
        fields.pop()
    if len(fields) != 2 or not fields[0]:
        return None, (f"expected <listed path><TAB><group id>, got {raw.strip(' ')!r} "
                      f"({len(fields)} tab-separated field(s))")
    listed, problem = _normalise(fields[0])
    if problem == "escapes":
        return None, f"path {fields[0]!r} points outside the dataset root"
    if problem == "no_genre":
        return None, f"path {fields[0]!r} has no genre folder"
    return (listed, fields[1]), None


def _check_group_leakage(listed: dict[str, list[_Listed]], groups: dict[str, str], problems: list) -> None:
    """Record every group whose clips are in more than one split."""
    where: dict[str, dict[str, list[_Listed]]] = {}
    for split, items in listed.items():
        for item in items:
            if item.real in groups:
                where.setdefault(groups[item.real], {}).setdefault(split, []).append(item)
    for group, by_split in where.items():
        if len(by_split) < 2:
            continue
        parts = [f"{split}: {_examples(split, items)}" for split, items in by_split.items()]
        problems.append(_Problem("group_leakage", 0, "group_leakage",
                                 f"{GROUPS_FILE}: group {group!r} is in {' and '.join(by_split)} "
                                 f"(leakage between splits): " + "; ".join(parts)))


def _examples(split: str, items: list[_Listed]) -> str:
    named = ", ".join(f"{item.clip.listed} ({LIST_FILES[split]}:{item.line})" for item in items[:_EXAMPLES])
    more = len(items) - _EXAMPLES
    return f"{len(items)} clip(s), {named}" + (f" and {more} more" if more > 0 else "")


def _problems_message(root: Path, problems: list[_Problem]) -> str:
    problems = sorted(problems, key=lambda p: (_SOURCE_ORDER[p.source], p.line))
    counts = Counter(p.kind for p in problems)
    lines = [f"split lists in {root} have {len(problems)} problem(s):"]
    lines += [f"  {p.message}" for p in problems]
    if counts["missing"] + counts["broken_link"]:
        lines.append(f"{counts['missing'] + counts['broken_link']} listed file(s) do not exist.")
    if counts["groups_missing"]:
        lines.append(f"{counts['groups_missing']} listed clip(s) have no group in {GROUPS_FILE}.")
    lines.append("How to fix:")
    for key in counts:
        lines.append("  - " + _HINTS[key].format(files=", ".join(LIST_FILES.values())))
    return "\n".join(lines)
