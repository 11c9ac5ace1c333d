"""Finding image files TensorFlow cannot decode, before training reads them.

A corrupt, truncated or mislabelled file in a ``--dataset=folder`` tree
would otherwise stop training mid-epoch with a TensorFlow traceback that
names no file.  ``unreadable(paths)`` checks each file cheaply, without
decoding its pixels: Pillow identifies the format from the file's first
bytes and walks its structure (``Image.verify``: chunk CRCs and the end
chunk of a PNG, the header of a GIF or BMP), the format must be one of
``tf.io.decode_image``'s, and a JPEG must end its last scan with the
end-of-image marker (a truncated file does not).  Where a record states the
image's size (a COCO JSON's ``width`` and ``height``), the file's own size,
read from its header, must agree.
"""

import concurrent.futures
import os

from PIL import Image, UnidentifiedImageError

ON_BAD_IMAGE = ("skip", "fail")
TF_DECODABLE = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END_OF_IMAGE = b"\xff\xd9"
_SCAN_THREADS = 8  # file reads wait on the disk, not the interpreter
_SHOWN = 5


def problem(path, size=None):
    """Why ``path`` cannot be decoded as an image (of ``size`` = (width, height)), or None."""
    try:
        with Image.open(path) as image:
            kind, actual = image.format, tuple(image.size)
            image.verify()
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's damaged-file errors
        return f"damaged ({str(error).strip() or type(error).__name__})"
    if kind not in TF_DECODABLE:
        return f"{kind} images cannot be decoded by TensorFlow"
    if kind == "JPEG":
        with open(path, "rb") as handle:
            data = handle.read()
        # Inside entropy-coded data 0xFF is always stuffed, so these two
        # markers appear only as markers; an embedded thumbnail ends earlier.
        if data.rfind(_JPEG_END_OF_IMAGE) < data.rfind(_JPEG_START_OF_SCAN):
            return "truncated (no end-of-image marker after its last scan)"
    if size is not None and actual != tuple(size):
        return f"{actual[0]}x{actual[1]} pixels, not the {size[0]}x{size[1]} of its record"
    return None


def unreadable(paths, sizes=None):
    """``{path: reason}`` for every file of ``paths`` that cannot be decoded.

    ``sizes``: the (width, height) each file must have, or None.
    """
    sizes = [None] * len(paths) if sizes is None else sizes
    with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
        reasons = pool.map(problem, paths, sizes)
        return {path: reason for path, reason in zip(paths, reasons) if reason}


def describe(bad, root):
    """A one-line list of the first few bad files (relative to ``root``) and the count."""
    items = [f"{os.path.relpath(path, root)} ({reason})" for path, reason in sorted(bad.items())]
    shown = ", ".join(items[:_SHOWN])
    if len(items) > _SHOWN:
        shown += f" and {len(items) - _SHOWN} more"
    return shown
