"""The local model in a process of its own: ``python model_server.py <model path> <threads> <batch size>``.

Run by ``conversations.embeddings.model_process``, never imported by convo: it is a standalone
script (the standard library, numpy and sentence-transformers; no Django), so it starts without
settings and loads nothing it does not need. Why a process of its own: in the worker, the model
thread shared the interpreter lock with the thread that stores the previous batch, and each of
that thread's statements made the model wait (docs/benchmarks.md, issue 3).

The protocol, on stdin and stdout, is a frame at a time: a 4-byte big-endian length, then the
payload. The first frame out is JSON, ``{"dimensions": n}`` once the model is loaded or
``{"error": "..."}`` if it cannot be. Then each frame in is a JSON list of texts, answered by
``V`` and the vectors (float32, little-endian, row after row; unit length) or by ``E`` and an
error message. End of input (the parent closed the pipe, or died) ends the process, and so does
a change of parent. Anything a library prints goes to stderr, never into the frames.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

FRAME_LENGTH = struct.Struct(">I")  # the length before every frame, both ways


def frame_read(stream: BinaryIO) -> bytes | None:
    """The next frame's payload, or None at a clean end of input."""
    header = stream.read(FRAME_LENGTH.size)
    if len(header) < FRAME_LENGTH.size:
        return None
    (length,) = FRAME_LENGTH.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return payload


def frame_write(stream: BinaryIO, payload: bytes) -> None:
    stream.write(FRAME_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def model_load(path: str) -> tuple[Any, int]:
    """The model at ``path``, offline (nothing is ever downloaded), and the size of its vectors.
    Also what ``local.load_model`` loads in the calling process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    model.eval()
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    produced = getter()
    if produced is None:
        raise ValueError("the model does not tell the size of its vectors")
    return model, int(produced)


def model_encode(model: Any, texts: list[str], batch_size: int) -> Any:
    """Unit vectors of ``texts`` as a float32 array: how the model is called, here and in a
    calling process (``local.SentenceTransformerEmbedder``), so both give the same vectors."""
    return model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def serve(path: str, threads: int, batch_size: int, stdin: BinaryIO, stdout: BinaryIO) -> int:
    try:
        import torch

        torch.set_num_threads(threads)
        model, dimensions = model_load(path)
    except Exception as exc:  # reported to the parent, which raises ImproperlyConfigured
        frame_write(stdout, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return 1
    frame_write(stdout, json.dumps({"dimensions": dimensions}).encode())
    while (request := frame_read(stdin)) is not None:
        try:
            texts = json.loads(request)
            array = model_encode(model, texts, batch_size)
            answer = b"V" + array.astype("<f4", copy=False).tobytes()
        except Exception as exc:  # this batch failed; the model is still there for the next
            answer = b"E" + f"{type(exc).__name__}: {exc}".encode(errors="backslashreplace")
        try:
            frame_write(stdout, answer)
        except BrokenPipeError:  # the parent is gone
            return 0
    return 0


def _exit_when_orphaned(parent: int) -> None:
    """A hung parent never closes the pipe, and a dead one cannot: the child also stops when it
    is handed to another parent (its own died)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The frames go to the original stdout alone; anything a library prints goes to stderr.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    return serve(argv[1], int(argv[2]), int(argv[3]), sys.stdin.buffer, protocol)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
