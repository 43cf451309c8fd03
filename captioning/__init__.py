"""Image-captioning course kit."""
