"""Protocol adapters at the DICOM and FHIR edges: the DICOM listener and C-STORE sender
(pynetdicom), STOW-RS parsing and forwarding, the DICOM SR (highdicom) and the FHIR report."""
