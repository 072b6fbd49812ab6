"""Where a FoMo-in-Flux tree keeps what (spec ``fomo_in_flux.md`` section 9).

The release is a code repository with its data extracted beside it::

    <root>/data/<NAME>/...                         images, in each dataset's native sub-folders
    <root>/data/<NAME>/<NAME>_<split>_224/...      resized copies, where made
    <root>/data_lib/00_info/<NAME>_classnames.json list of class names; the index is the target
    <root>/data_lib/00_info/<NAME>_<split>.json    image path (relative to data/<NAME>/) -> record
    <root>/data_lib/00_info/<NAME>_<split>_224.json the same records, keyed by the resized copies
    <root>/stream_construction/*.json              streams: lists of "NAME+++classname"

``image_root`` and ``info_dir`` can also be given apart, for a data folder kept elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fluxbench.errors import DataError

SOURCE = "https://github.com/ExplainableML/fomo_in_flux"
LAYOUT = ("data/<NAME>/<images>, data_lib/00_info/<NAME>_classnames.json and <NAME>_{train,test}.json, "
          "stream_construction/<stream>.json")
RESIZED = 224  # the release's `resize`: resized copies are <NAME>_<split>_224


@dataclass(frozen=True)
class FifLayout:
    image_root: Path
    info_dir: Path
    stream_dir: Path

    @classmethod
    def from_root(cls, root: str | Path) -> FifLayout:
        """The release layout under ``root``; a missing root or part is a one-line :class:`DataError`."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"FoMo-in-Flux root {root} does not exist; expected {LAYOUT} under it "
                            f"(published at {SOURCE})")
        layout = cls(root / "data", root / "data_lib" / "00_info", root / "stream_construction")
        for part in (layout.image_root, layout.info_dir):
            if not part.is_dir():
                raise DataError(f"{part} does not exist; a FoMo-in-Flux root holds {LAYOUT} (published at {SOURCE})")
        return layout

    def dataset_dir(self, name: str) -> Path:
        path = self.image_root / name
        if not path.is_dir():
            raise DataError(f"dataset folder {path} does not exist; extract the {name} archive there "
                            f"(see the download scripts at {SOURCE})")
        return path

    def classnames_file(self, name: str) -> Path:
        return self.info_dir / f"{name}_classnames.json"

    def info_file(self, name: str, split: str, resized: bool = False) -> Path:
        return self.info_dir / (f"{name}_{split}_{RESIZED}.json" if resized else f"{name}_{split}.json")

    def resized_dir(self, name: str, split: str) -> Path:
        return self.image_root / name / f"{name}_{split}_{RESIZED}"

    def stream_file(self, stream: str | Path) -> Path:
        """A stream by path, or by name under ``stream_construction/`` (``random_sequence_1``)."""
        path = Path(stream)
        if path.is_file():
            return path
        for candidate in (self.stream_dir / path, self.stream_dir / f"{path}.json"):
            if candidate.is_file():
                return candidate
        raise DataError(f"stream {stream} not found (neither a file nor {self.stream_dir}/{path.stem}.json); "
                        f"the released orderings are in stream_construction/ at {SOURCE}")
