"""drf-spectacular postprocessing hook: the generator drops '$' from paths (it reads them as
regex anchors), so FHIR operation paths such as /fhir/Patient/$match are put back.

settings.SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"] = [
    "drf_spectacular.hooks.postprocess_schema_enums", "exchange.mpi.api.schema.restore_fhir_operations"]
"""

FHIR_OPERATIONS = {"/api/mpi/fhir/Patient/match": "/api/mpi/fhir/Patient/$match"}


def restore_fhir_operations(result, generator, request, public):
    paths = result.get("paths", {})
    for wrong, right in FHIR_OPERATIONS.items():
        if wrong in paths:
            paths[right] = paths.pop(wrong)
    return result
