"""Video files: probing, editing and encoding with PyAV (``shared.video.media``). PyAV and numpy are
imported inside the functions that use them, so importing this package costs nothing."""
