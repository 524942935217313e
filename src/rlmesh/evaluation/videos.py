"""Videos of evaluated episodes: ``evaluate(..., videos=DIR, video_episodes=K)``.

The first K episodes of each task are written as H.264 mp4 files,
``DIR/<task label>/episode_<i>_seed_<s>.mp4``, at the env's ``render_fps`` (30 when it names
none): the frame its reset rendered, then one per step, so a file holds the episode's length + 1
frames. The env runs with ``render_mode="rgb_array"`` in its sandbox, and frames cross only for
the lanes being recorded. The encoder is the FFmpeg binary (with libx264) inside the
imageio-ffmpeg wheel, the ``rlmesh[video]`` extra, run as a process of its own that reads raw
frames on a pipe: no codec library is loaded into the host's process (FFmpeg's libraries loaded
there, as PyAV does, made every later fork from the event loop's thread hang). H.264 in yuv420p
is lossy, so a decoded frame equals the rendered one within the codec's tolerance, and an odd
width or height is padded by one edge pixel.
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
    """imageio-ffmpeg, or a clear error saying how to install it.

    Raises:
        InvalidArgumentError: imageio-ffmpeg is not installed.
    """
    try:
        return importlib.import_module("imageio_ffmpeg")
    except ImportError as exc:
        raise InvalidArgumentError(
            f"videos= needs imageio-ffmpeg (an FFmpeg binary with libx264 inside its wheel), which rlmesh does not "
            f"install by default ({exc}): pip install 'rlmesh[video]' (or pip install imageio-ffmpeg)"
        ) from None


def video_path(root: Path, task: str, index: int, seed: int) -> Path:
    """Where episode ``index`` of ``task`` is written: ``root/<task label>/episode_<i>_seed_<s>.mp4``
    (the label's ``/`` become ``--``, so that each task has one directory)."""
    folder = re.sub(r"[^A-Za-z0-9._:=-]+", "--", label_of(task).replace("/", "--"))
    return root / folder / f"episode_{index}_seed_{seed}.mp4"


class EpisodeVideo:
    """One episode's mp4, its encoder started at its first frame.

    Args:
        encoder: imageio-ffmpeg (:func:`load_encoder`).
        path: The file.
        fps: Frames per second.
    """

    def __init__(self, encoder: Any, path: Path, fps: float) -> None:
        self.encoder = encoder
        self.path = path
        self.fps = fps
        self.frames = 0
        self._writer: Any = None
        self._shape: tuple[int, ...] | None = None

    def add(self, frame: Any) -> None:
        """Encode one rendered frame (``uint8[H, W, 3]``).

        Raises:
            InvalidArgumentError: Not an RGB frame (the env renders something else), or its size changed.
        """
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InvalidArgumentError(
                f"videos need rgb_array frames (uint8[H, W, 3]); the env rendered {arr.dtype}{list(arr.shape)}"
            )
        if self._shape is not None and arr.shape != self._shape:
            raise InvalidArgumentError(f"the env's frames changed size mid-episode ({self._shape} to {arr.shape})")
        self._shape = arr.shape
        pad = ((0, arr.shape[0] % 2), (0, arr.shape[1] % 2), (0, 0))
        if pad[0][1] or pad[1][1]:
            arr = np.pad(arr, pad, mode="edge")  # yuv420p needs even sides
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self.encoder.write_frames(
                str(self.path), (arr.shape[1], arr.shape[0]), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", macro_block_size=1, output_params=["-crf", CRF], ffmpeg_log_level="error")
            self._writer.send(None)  # starts the encoder's process
        self._writer.send(np.ascontiguousarray(arr))
        self.frames += 1

    def close(self) -> None:
        """Finish the file. Idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def discard(self) -> None:
        """Stop the encoder and remove the file (the episode failed; a rerun writes it again)."""
        self.close()
        self.path.unlink(missing_ok=True)
