"""The radiologist's viewer: a local web application over Delineo's public API.

``delineo serve`` starts :func:`delineo.serve.app.create_app` on uvicorn. Modules: ``store``
(the workspace on disk: studies, mask versions, job records), ``ingest`` (uploads to studies:
type checks, safe unpacking, DICOM series), ``models`` (the ``--models`` folder), ``jobs``
(bounded queue with live progress), ``analysis`` (structures table), ``app`` (HTTP API and
pages); ``static/`` holds the browser side, with NiiVue bundled (see NIIVUE_LICENSE.txt).
"""
