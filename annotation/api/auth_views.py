"""API tokens: get one with a username and password, list yours, revoke one, or revoke the one in use.
Tokens are knox's (hashed, expiring; see ``annotation.auth``)."""
from __future__ import annotations

from django.utils import timezone
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from drf_spectacular.utils import extend_schema, inline_serializer
from knox.models import AuthToken
from knox.views import LoginView, LogoutView
from rest_framework import serializers, status
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.exceptions import NotAuthenticated, NotFound
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from ..auth import LoginThrottle, TokenAuthentication

ISSUED = inline_serializer("IssuedToken", {"token": serializers.CharField(help_text="shown once: keep it"),
                                           "expiry": serializers.DateTimeField()})


class TokenScheme(KnoxTokenScheme):
    """The OpenAPI security scheme of ``annotation.auth.TokenAuthentication`` (knox's, subclassed)."""

    target_class = "annotation.auth.TokenAuthentication"
    name = "apiToken"


class TokenSerializer(serializers.ModelSerializer):
    current = serializers.SerializerMethodField(help_text="the token this request authenticated with")

    class Meta:
        model = AuthToken
        fields = ["token_key", "created", "expiry", "current"]

    def get_current(self, token) -> bool:
        auth = self.context["request"].auth
        return isinstance(auth, AuthToken) and auth.digest == token.digest


class TokenLoginView(LoginView):
    """A new API token for a username and password (throttled per address; repeated failures lock the
    username out from that address). Send it as ``Authorization: Token <token>``."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginThrottle]

    @extend_schema(request=AuthTokenSerializer, responses={200: ISSUED})
    def post(self, request, format=None):
        # Django's own request: django-axes marks a locked-out attempt on it, and its middleware answers.
        credentials = AuthTokenSerializer(data=request.data, context={"request": request._request})
        credentials.is_valid(raise_exception=True)
        request.user = credentials.validated_data["user"]
        return super().post(request, format=format)


class TokenListView(APIView):
    @extend_schema(responses=TokenSerializer(many=True))
    def get(self, request):
        """Your unexpired API tokens (their first characters only: the secret is never stored)."""
        tokens = AuthToken.objects.filter(user=request.user, expiry__gt=timezone.now()).order_by("created")
        return Response(TokenSerializer(tokens, many=True, context={"request": request}).data)


class TokenRevokeView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request, token_key: str):
        """Revoke one of your tokens by its ``token_key``; another user's is simply not found."""
        deleted, _ = AuthToken.objects.filter(user=request.user, token_key=token_key).delete()
        if not deleted:
            raise NotFound("No such token.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenLogoutView(LogoutView):
    """Revoke the token this request authenticated with."""

    authentication_classes = [TokenAuthentication]

    @extend_schema(request=None, responses={204: None})
    def post(self, request, format=None):
        if not isinstance(request.auth, AuthToken):  # a session (or a test's forced login) has no token to revoke
            raise NotAuthenticated("Send the token to revoke as Authorization: Token <token>.")
        return super().post(request, format=format)
