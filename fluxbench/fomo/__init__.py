"""FoMo-in-Flux (Roth et al., NeurIPS 2024 D&B): the released on-disk format, its streams, a mini-FiF builder.

Spec: ``fomo_in_flux.md`` (section 3: streams and task chunking; section 9: on-disk format and the
mini-FiF recipe). Modules, one job each:

- :mod:`~fluxbench.fomo.datasets_table`: the 63 datasets as table rows (PRIMER, role, kind);
- :mod:`~fluxbench.fomo.layout`: where a tree keeps images, info JSONs and streams;
- :mod:`~fluxbench.fomo.info`: the generic reader of info JSONs and images;
- :mod:`~fluxbench.fomo.captions`: the caption rule;
- :mod:`~fluxbench.fomo.streams`: ``NAME+++class`` streams, task chunking, manifests and replay;
- :mod:`~fluxbench.fomo.mini`: a mini-FiF written from ImageFolder datasets already on disk;
- :mod:`~fluxbench.fomo.digits`: the embedded offline default (digits sub-domains in the released format).
"""

from fluxbench.fomo.datasets_table import RELEASED, DatasetTable, FifDataset
from fluxbench.fomo.info import FifReader, InfoRecord, InfoSplit
from fluxbench.fomo.layout import SOURCE, FifLayout

__all__ = ["RELEASED", "SOURCE", "DatasetTable", "FifDataset", "FifLayout", "FifReader", "InfoRecord", "InfoSplit"]
