"""The CLI's HTTP client is the SDK's REST layer (one implementation for both)."""

from kaip.sdk.errors import ApiError as ClientError
from kaip.sdk.rest import Resource
from kaip.sdk.rest import RestClient as Client

__all__ = ["Client", "ClientError", "Resource"]
