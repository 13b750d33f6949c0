"""``cloudseg serve``: one local server, two faces over one job queue.

- A web page (:mod:`.web`, Gradio) for people without QGIS: upload a scene or name one,
  pick the model and options, watch the progress, see the mask over the scene, download
  the results.
- OGC API - Processes (:mod:`.ogc`, pygeoapi) for scripts, QGIS and other services:
  ``/processes`` lists ``segment`` and ``explain``; jobs run synchronously or
  asynchronously (``Prefer: respond-async``), report progress, return links to COGs and
  can be dismissed.

Both faces submit to one :class:`.jobs.JobQueue` (one model run at a time by default),
whose jobs run the same engine functions as ``cloudseg segment`` and ``cloudseg explain``
(:mod:`.processes`), so a mask made through the server is the CLI's mask. The server
(:mod:`.app`) listens on localhost unless told otherwise, and then needs a token
(:mod:`.config`).
"""
