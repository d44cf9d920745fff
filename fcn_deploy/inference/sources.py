"""What ``infer SOURCE...`` reads, and where each input's outputs go.

A source is a folder (searched recursively), a glob (``photos/**/*.jpg``), a text file that lists
one path per line (blank lines and ``#`` comments ignored; relative paths are relative to the list),
or one image or video file.  Images and videos may be mixed.  The outputs mirror the input tree
below the sources' common folder, so a folder of folders comes back as the same folders:

* an image ``A/B.jpg`` -> ``OUT/masks/A/B.png`` (class indices) and ``OUT/overlays/A/B.png``;
* a video ``A/C.mp4`` -> ``OUT/overlays/A/C.mp4`` (the overlay video) and, when masks of videos
  are asked for, ``OUT/masks/A/C/frame_NNNNNN.png``.

Single-process ``infer`` and ``infer --ray`` both take their inputs from :func:`expand_sources`
and their paths from :class:`Layout`, so the two agree file for file.  Every output is written
whole or not at all, so "complete" is "present": :meth:`Layout.complete` is what a rerun skips.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..data.images import IMAGE_SUFFIXES
from ..errors import FcnDeployError

#: Files taken as videos when a folder, glob or list is searched (a single file named alone is a
#: video whatever its suffix, as before).
VIDEO_INPUT_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264", ".hevc"})
#: A source with one of these suffixes is a list of paths, one a line.
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One input: the file, whether it is an image or a video, and its place in the output tree
    (its path below the sources' common folder, without suffix)."""

    path: Path
    kind: str  # "image" | "video"
    rel: str  # POSIX, e.g. "day1/cam2/0001"

    def as_row(self) -> dict[str, str]:
        return {"path": str(self.path), "kind": self.kind, "rel": self.rel}

    @classmethod
    def from_row(cls, row: dict) -> Item:
        return cls(Path(row["path"]), str(row["kind"]), str(row["rel"]))


def media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "video" if suffix in VIDEO_INPUT_SUFFIXES else None


def _walk(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / name for name in sorted(names) if not name.startswith(".") and media_kind(Path(name))]
    return files


def _glob_root(pattern: str) -> Path:
    """The folder above a glob's first wildcard: the tree below it is mirrored."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, part in enumerate(parts) if GLOB_CHARS & set(part))]
    return Path(*fixed) if fixed else Path(".")


def _read_list(listing: Path) -> list[Path]:
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FcnDeployError(f"{listing}: cannot read the list of inputs ({exc}); give a text file with one path per line") from exc
    paths = [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise FcnDeployError(f"{listing}: lists no inputs; write one image or video path per line")
    return [path if path.is_absolute() else listing.parent / path for path in paths]


def _one_source(source: str | Path) -> tuple[list[Path], Path]:
    """(files, the folder their tree is mirrored from)."""
    text = str(source)
    path = Path(source)
    if path.is_dir():
        return _walk(path), path
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            files = _read_list(path)
            parents = [str(file.parent.resolve()) for file in files]
            return files, Path(os.path.commonpath(parents))
        return [path], path.parent
    if GLOB_CHARS & set(text):
        files = sorted(Path(match) for match in glob.glob(text, recursive=True) if Path(match).is_file() and media_kind(Path(match)))
        return files, _glob_root(text)
    raise FcnDeployError(f"source not found: {source}; give a folder, a glob, a list of paths (.txt), an image or a video")


def expand_sources(sources: Sequence[str | Path]) -> list[Item]:
    """Every input the sources name, in order, once each.  A path a list names that does not exist
    is kept (it is reported as unreadable when its turn comes, like a corrupt file); a folder or
    glob with no images or videos is an error, as are two inputs whose outputs would collide."""
    if not sources:
        raise FcnDeployError("no sources given; name a folder, a glob, a list of paths, an image or a video")
    found: list[tuple[Path, Path]] = []
    for source in sources:
        files, root = _one_source(source)
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_INPUT_SUFFIXES))
            raise FcnDeployError(f"no images or videos in {source} (looked for {suffixes})")
        found += [(file, root) for file in files]
    base = Path(os.path.commonpath([str(root.resolve()) for _, root in found]))
    items: list[Item] = []
    seen: dict[Path, None] = {}
    owners: dict[str, Path] = {}
    for file, _ in found:
        resolved = file.resolve()
        if resolved in seen:
            continue
        seen[resolved] = None
        rel = PurePosixPath(*resolved.relative_to(base).with_suffix("").parts).as_posix()
        if rel in owners:
            raise FcnDeployError(f"{owners[rel]} and {file} would write the same outputs ({rel}); rename one of them")
        owners[rel] = file
        items.append(Item(file, media_kind(file) or "video", rel))
    return items


def sources_base_name(sources: Sequence[str | Path]) -> str:
    """A name for the default output folder: the one source's name, else the common folder's."""
    if len(sources) == 1 and not (GLOB_CHARS & set(str(sources[0]))):
        path = Path(sources[0]).resolve()
        return path.name if path.is_dir() else path.stem
    roots = [str(_one_source(source)[1].resolve()) for source in sources]
    return Path(os.path.commonpath(roots)).name or "infer"


@dataclass(frozen=True)
class Layout:
    """Where an item's outputs go: ``masks`` and ``overlays`` roots, and which outputs are asked."""

    masks: Path
    overlays: Path
    write_overlays: bool = True
    video_masks: bool = False

    def mask_png(self, item: Item) -> Path:
        return self.masks / f"{item.rel}.png"

    def overlay_png(self, item: Item) -> Path:
        return self.overlays / f"{item.rel}.png"

    def overlay_video(self, item: Item) -> Path:
        return self.overlays / f"{item.rel}.mp4"

    def frame_masks(self, item: Item) -> Path:
        return self.masks / item.rel

    def outputs(self, item: Item) -> list[Path]:
        """The files that make ``item`` complete (a video's frame masks are written before its
        video is renamed into place, so the video stands for them)."""
        if item.kind == "image":
            return [self.mask_png(item), *([self.overlay_png(item)] if self.write_overlays else [])]
        return [self.overlay_video(item)]

    def complete(self, item: Item) -> bool:
        if not all(path.is_file() for path in self.outputs(item)):
            return False
        if item.kind == "video" and self.video_masks:
            folder = self.frame_masks(item)
            return folder.is_dir() and any(folder.glob("frame_*.png"))
        return True
