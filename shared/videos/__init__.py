"""Product videos: the video job kind (Veo clips polled to completion, joined, voiced, reframed into
deliverables and stored as video assets), video edits (new revisions of a video asset), the nine video
styles, scripts and prompts. The file work itself is :mod:`shared.video.media` (PyAV), imported only
inside the worker's steps."""
