"""The DICOM screening node: a Storage SCP beside the PACS (``python -m cxr_core node``).

``queue`` is the durable record of every film received (SQLite in WAL mode, films as files, both synced
before the sender hears "stored"); ``admission`` decides from the header which films are not to be
screened; ``scp`` receives; ``worker`` screens with the served Predictor and delivers the SR and the
Secondary Capture back to the PACS with retries; ``service`` wires them into one process.
"""
