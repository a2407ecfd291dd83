"""The I3D input contract between decoded frames and the frozen backbone, shared by stage one
(:mod:`udaqa_pipeline.cache.extract`), scoring and fine-tuning: the clip layout, the views and their
one shift/flip, the cached video size, and the forward over clips (whole, or stopping at / starting
from a named I3D block)."""

from .forward import activations_at, default_batch_size, features_from, featurize, forward_clips
from .inputs import STATUS_OF_KIND, failure_status, layout_of, video_size_of, view_input
from .views import DEFAULT_VIEW_SHIFT, apply_view, make_views, shift_frames

__all__ = ["DEFAULT_VIEW_SHIFT", "STATUS_OF_KIND", "activations_at", "apply_view", "default_batch_size",
           "failure_status", "features_from", "featurize", "forward_clips", "layout_of", "make_views",
           "shift_frames", "video_size_of", "view_input"]
