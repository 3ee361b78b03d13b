"""Images in GGUF chats: a LLaVA-style projector file (`options.mmproj`, CLIP tower + projector)
through llama.cpp's multimodal library (mtmd), on the model's own batching context.

`ProjectorFile` reads what the spec and the memory estimate need from the file's header (no llama
import). In the worker, `Projector` turns a rendered prompt whose images stand as mtmd's media
marker into token ids, each image a run of placeholders (one negative id per image), and an
`ImagePrompt` that decodes an image's embeddings into a sequence's KV cells when the scheduler
reaches its placeholders (gguf/scheduler.py). Text steps of other requests go on around it.
"""

from __future__ import annotations

import base64
import ctypes
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.contract import InvalidInput
from backends.gguf.file import GgufFile, GgufFileError

FLOAT_BYTES = 4  # the CLIP graph computes in float32


@dataclass(frozen=True)
class ProjectorFile:
    """What a projector's header says: the square its encoder reads, and its sizes."""

    size_bytes: int
    image_size: int
    patch_size: int
    width: int
    ffn: int
    heads: int
    tiles: int  # most tiles one image becomes (LLaVA 1.6's any-resolution grids, plus the overview)

    @classmethod
    def read(cls, path: Path) -> ProjectorFile | None:
        """None for a file that is not a readable vision projector (the load says why)."""
        try:
            info = GgufFile.read(path)
        except GgufFileError:
            return None
        meta = info.metadata
        if not meta.get("clip.has_vision_encoder"):
            return None
        pinpoints = meta.get("clip.vision.image_grid_pinpoints") or []
        size = int(meta.get("clip.vision.image_size", 336))
        grids = [pinpoints[i] * pinpoints[i + 1] // (size * size) for i in range(0, len(pinpoints) - 1, 2)]
        return cls(size_bytes=info.size_bytes, image_size=size, patch_size=int(meta.get("clip.vision.patch_size", 14)),
                   width=int(meta.get("clip.vision.embedding_length", 1024)),
                   ffn=int(meta.get("clip.vision.feed_forward_length", 4096)),
                   heads=int(meta.get("clip.vision.attention.head_count", 16)),
                   tiles=max(grids, default=0) + 1)

    def encoder_bytes(self) -> int:
        """The CLIP graph's working memory for one tile: hidden states, the FFN and attention scores."""
        patches = (self.image_size // self.patch_size) ** 2 + 1
        return FLOAT_BYTES * (patches * (4 * self.width + 2 * self.ffn) + self.heads * patches * patches)


class Projector:
    """The loaded projector of one model (worker side)."""

    def __init__(self, lc, model, path: Path, n_threads: int, use_gpu: bool):
        from llama_cpp import _logger, mtmd_cpp

        self._mtmd = mtmd = mtmd_cpp
        self._lc = lc
        mtmd.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))  # through llama-cpp-python's logger
        mtmd.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.print_timings, params.n_threads, params.warmup = use_gpu, False, n_threads, False
        self.ctx = mtmd.mtmd_init_from_file(str(path).encode(), model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not load the projector {path.name} for this model "
                               "(not an mmproj file, or made for another text model)")
        if not mtmd.mtmd_support_vision(self.ctx):
            mtmd.mtmd_free(self.ctx)
            raise RuntimeError(f"{path.name} is a projector without a vision encoder")
        self.marker = mtmd.mtmd_default_marker().decode()
        self._keys = itertools.count(1)  # placeholder ids: -1, -2, ... never repeat in this worker

    def prompt(self, text: str, images: list[str], add_special: bool) -> tuple[list[int], ImagePrompt]:
        """Token ids for `text` (images at its markers, in order; each a base64 PNG), image positions
        as placeholders, and the ImagePrompt that decodes them."""
        mtmd = self._mtmd
        bitmaps = []
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            for index, png in enumerate(images):
                data = base64.b64decode(png)
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(
                    self.ctx, (ctypes.c_uint8 * len(data)).from_buffer_copy(data), len(data), False)
                if not bitmap:
                    raise InvalidInput(f"image {index} could not be read by the model's projector", param="messages")
                bitmaps.append(bitmap)
            encoded = text.encode()
            given = mtmd.mtmd_input_text(text=encoded, text_len=len(encoded), add_special=add_special,
                                         parse_special=True)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
            code = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(given), array, len(bitmaps))
            if code != 0:
                raise InvalidInput(f"the images do not match the prompt's image markers (mtmd code {code})",
                                   param="messages")
            tokens, placed = self._tokens(chunks)
        except BaseException:
            mtmd.mtmd_input_chunks_free(chunks)
            raise
        finally:
            for bitmap in bitmaps:  # the chunks hold their own preprocessed copies
                mtmd.mtmd_bitmap_free(bitmap)
        if not tokens or tokens[-1] < 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise InvalidInput("the prompt must not end with an image", param="messages")
        return tokens, ImagePrompt(self, chunks, placed)

    def _tokens(self, chunks) -> tuple[list[int], dict[int, Any]]:
        mtmd = self._mtmd
        tokens: list[int] = []
        placed: dict[int, Any] = {}
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens.extend(ids[j] for j in range(count.value))
            else:
                key = -next(self._keys)
                placed[key] = chunk
                tokens.extend([key] * mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        return tokens, placed

    def close(self) -> None:
        if self.ctx:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None


class ImagePrompt:
    """One request's images, tokenized; the scheduler decodes each when it reaches it."""

    def __init__(self, projector: Projector, chunks, placed: dict[int, Any]):
        self._projector, self._chunks, self._placed = projector, chunks, placed

    @property
    def count(self) -> int:
        return len(self._placed)

    def decode(self, ctx, key: int, n_past: int, seq_id: int, n_batch: int) -> int:
        """Encode image `key` and decode its embeddings at `n_past` in `seq_id`; the next position."""
        lc, mtmd = self._projector._lc, self._projector._mtmd
        after = lc.llama_pos(0)
        code = mtmd.mtmd_helper_eval_chunk_single(self._projector.ctx, ctx, self._placed[key], n_past, seq_id,
                                                  n_batch, False, ctypes.byref(after))
        if code != 0:
            raise RuntimeError(f"llama.cpp could not decode an image (mtmd code {code})")
        return int(after.value)

    def close(self) -> None:
        if self._chunks is not None:
            self._projector._mtmd.mtmd_input_chunks_free(self._chunks)
            self._chunks = None


def image_slots(messages: list[dict[str, Any]]) -> Iterator[int]:
    """The `images` index of every ImagePart, in the order the prompt shows them."""
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image":
                yield int(part.get("image", -1))
