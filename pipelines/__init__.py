"""DICOM in -> numbers and images -> DICOM out.

No sockets, databases, threads or clocks: every step runs offline on files or datasets.
"""
