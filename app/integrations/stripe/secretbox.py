"""Organizations' Stripe secrets at rest: Fernet tokens under the server keys (METERKIT_SECRETS_KEYS).

MultiFernet: the first key encrypts, every key decrypts, so a new key is put first, the stored
tokens are re-encrypted under it (`meterkit stripe rotate-secrets`), and only then the old key is
dropped. Production refuses to store or read a secret without a configured key; elsewhere a fixed
development key stands in (its tokens are no secret to anyone who has this source)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.core.errors import DomainError
from app.settings import Settings

# Development and tests only, never in production: anyone with the source can derive it.
DEV_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"meterkit development secrets key").digest()).decode()


class SecretsKeyMissing(DomainError):
    """Production without METERKIT_SECRETS_KEYS: no organization secret is stored or read."""

    code = "SECRETS_KEY_MISSING"


class SecretUnreadable(DomainError):
    """A stored token no configured key opens (a key dropped before rotate-secrets ran)."""

    code = "SECRET_UNREADABLE"


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretsKeyMissing("no server key: set METERKIT_SECRETS_KEYS")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError):
            # The message names no key: a malformed one is still a secret.
            raise SecretsKeyMissing("METERKIT_SECRETS_KEYS holds a key that is not a Fernet key") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.secrets_keys:
            return cls(list(settings.secrets_keys))
        if settings.env == "production":
            raise SecretsKeyMissing(
                "organizations' Stripe secrets need a server key in production: set METERKIT_SECRETS_KEYS"
            )
        return cls([DEV_KEY])

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("a stored Stripe secret cannot be read with the configured server keys") from None

    def rotate(self, token: str) -> str:
        """The same secret under the first key (a token already under it is re-encrypted too)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("a stored Stripe secret cannot be read with the configured server keys") from None


def new_key() -> str:
    return Fernet.generate_key().decode()
