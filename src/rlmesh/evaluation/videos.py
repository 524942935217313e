"""Videos of evaluated episodes: ``evaluate(..., videos=DIR, video_episodes=K)``.

The first K episodes of each task are written as H.264 mp4 files,
``DIR/<task label>/episode_<i>_seed_<s>.mp4``, at the env's ``render_fps`` (30 when it names
none): the frame its reset rendered, then one per step, so a file holds the episode's length + 1
frames. The env runs with ``render_mode="rgb_array"`` in its sandbox, and frames cross only for
the lanes being recorded. The encoder is PyAV (FFmpeg and libx264 inside its wheel), the
``rlmesh[video]`` extra; H.264 in yuv420p is lossy, so a decoded frame equals the rendered one
within the codec's tolerance, and an odd width or height is padded by one edge pixel.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .report import label_of

__all__ = ["DEFAULT_FPS", "EpisodeVideo", "load_encoder", "video_path"]

DEFAULT_FPS = 30
CRF = "18"  # x264's quality: visually lossless for rendered frames


def load_encoder() -> Any:
    """PyAV, or a clear error saying how to install it.

    Raises:
        InvalidArgumentError: PyAV is not installed.
    """
    try:
        return importlib.import_module("av")
    except ImportError as exc:
        raise InvalidArgumentError(
            f"videos= needs PyAV, which rlmesh does not install by default ({exc}): pip install 'rlmesh[video]' "
            "(or pip install av)"
        ) from None


def video_path(root: Path, task: str, index: int, seed: int) -> Path:
    """Where episode ``index`` of ``task`` is written: ``root/<task label>/episode_<i>_seed_<s>.mp4``
    (the label's ``/`` become ``--``, so that each task has one directory)."""
    folder = re.sub(r"[^A-Za-z0-9._:=-]+", "--", label_of(task).replace("/", "--"))
    return root / folder / f"episode_{index}_seed_{seed}.mp4"


class EpisodeVideo:
    """One episode's mp4, opened at its first frame.

    Args:
        av: PyAV (:func:`load_encoder`).
        path: The file.
        fps: Frames per second.
    """

    def __init__(self, av: Any, path: Path, fps: float) -> None:
        self.av = av
        self.path = path
        self.fps = fps
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._shape: tuple[int, ...] | None = None

    def add(self, frame: Any) -> None:
        """Encode one rendered frame (``uint8[H, W, 3]``).

        Raises:
            InvalidArgumentError: Not an RGB frame (the env renders something else).
        """
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InvalidArgumentError(
                f"videos need rgb_array frames (uint8[H, W, 3]); the env rendered {arr.dtype}{list(arr.shape)}"
            )
        if self._shape is not None and arr.shape != self._shape:
            raise InvalidArgumentError(f"the env's frames changed size mid-episode ({self._shape} to {arr.shape})")
        pad = ((0, arr.shape[0] % 2), (0, arr.shape[1] % 2), (0, 0))
        if any(p[1] for p in pad):
            arr = np.pad(arr, pad, mode="edge")  # yuv420p needs even sides
        if self._container is None:
            self._shape = np.asarray(frame).shape
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = self.av.open(str(self.path), mode="w")
            self._stream = self._container.add_stream("libx264", rate=round(self.fps))
            self._stream.width, self._stream.height = arr.shape[1], arr.shape[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": CRF}
        video_frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush and close the file. Idempotent."""
        container, self._container = self._container, None
        if container is not None:
            for packet in self._stream.encode():
                container.mux(packet)
            container.close()

    def discard(self) -> None:
        """Close and remove the file (the episode failed; a rerun writes it again)."""
        container, self._container = self._container, None
        if container is not None:
            container.close()
        self.path.unlink(missing_ok=True)
