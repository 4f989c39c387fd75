"""Reading and writing images with their geometry."""

from delineo.io.files import case_name, image_suffix, is_image_file, read_image, write_image
from delineo.io.image import Image

__all__ = ["Image", "read_image", "write_image", "case_name", "image_suffix", "is_image_file"]
