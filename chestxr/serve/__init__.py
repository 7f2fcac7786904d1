"""A DICOM AI node: receive radiographs by C-STORE, score them, send SR and Grad-CAM SC back.

``python -m chestxr.serve ckpt_path=PATH`` (config ``conf/serve.yaml``). Parts: :mod:`.scp`
(Storage SCP), :mod:`.spool` (durable intake), :mod:`.admission` (what is scored),
:mod:`.worker` (scoring), :mod:`.results` (DICOM SR and Secondary Capture), :mod:`.sender`
(C-STORE with retries), :mod:`.http` (JSON face).
"""
