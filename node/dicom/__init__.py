"""DICOM and PACS peers on the wire, and the one way in: the listener (C-ECHO, C-STORE; PS3.7,
PS3.8), admitted peers, TLS (PS3.15 B.12), validation, ingest (spooled and indexed before
success), the outbound SCU, queries, verification at a destination, DICOMweb (PS3.18) and
Orthanc's REST API."""
