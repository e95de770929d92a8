"""A request whose audit event cannot be written fails with 503 and sends nothing else."""

import logging

from django.http import HttpResponse, JsonResponse

from audit.services import AuditUnavailable

log = logging.getLogger(__name__)


class AuditUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, AuditUnavailable):
            return None
        # The cause's type only: database errors can quote values.
        log.error("audit trail unavailable (%s) on %s", type(exception.__cause__).__name__, request.path)
        message = "audit trail unavailable: the request was not carried out"
        if request.path.startswith(("/dicomweb/", "/api/")):
            return JsonResponse({"error": message}, status=503, headers={"Retry-After": "30"})
        return HttpResponse(message, status=503, content_type="text/plain", headers={"Retry-After": "30"})
