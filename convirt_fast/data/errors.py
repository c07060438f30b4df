"""The data layer's error for an unusable image (its own module: the decoders of every format
raise it, and image_decode dispatches to them)."""


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""
