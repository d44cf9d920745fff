"""HTML pages for validate, benchmark and the demo: what an engineer looks at, in one file each.

Each page is one self-contained file (:mod:`.page`: no scripts, nothing fetched, plots as SVG and
pictures as PNG/JPEG ``data:`` URIs), built from the JSON report dicts the commands already write,
plus what JSON should not carry: the few validation images kept by
:class:`fcn_deploy.validation.ExampleKeeper` and, for the demo, frames of its videos.
One module per page: :mod:`.validation`, :mod:`.bench`, :mod:`.demo`.
"""

from .bench import benchmark_page, benchmark_section
from .demo import demo_page, video_frames
from .page import check_page_path, write_page
from .validation import (
    disagreement_picture,
    margin_colour_key,
    margin_histogram_plot,
    metric_columns,
    validation_page,
    validation_section,
)

__all__ = [
    "benchmark_page", "benchmark_section", "check_page_path", "demo_page", "disagreement_picture", "margin_colour_key",
    "margin_histogram_plot", "metric_columns", "validation_page", "validation_section", "video_frames", "write_page",
]  # fmt: skip
