"""DICOM out: the TID 1500 reports (PS3.16), derived SEG, Parametric Maps, summary image, FHIR
bundle, their codes, UIDs and shared attributes."""
