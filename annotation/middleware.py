"""The Content-Security-Policy on every HTML page the site serves: the labeler UI, the login and password
pages, the admin and the API docs. Model output is untrusted text; under this policy no inline script
and nothing from another origin runs, so even a sanitizer bug could not execute it."""
from __future__ import annotations

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            response.setdefault("Content-Security-Policy", CSP)
        return response
