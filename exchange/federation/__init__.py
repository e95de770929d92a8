"""Archive federation: connectors to hospital archives (DICOMweb, DIMSE) and index sync (issue #6)."""
