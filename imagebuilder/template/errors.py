"""The one error type of the template schema: an ARM error naming the JSON path of the bad input.

Exception tree::

    Exception
     └── TemplateError        .code (AIB's code where AIB has one, else ARM's), .message (says what to do),
                              .target (JSON path, e.g. "properties.customize[2].inline"), .details
"""

from __future__ import annotations

from typing import Any

# AIB's own codes (ProvisioningErrorCode in the 2025-10-01 spec) used by this package.
BAD_SOURCE_TYPE = "BadSourceType"
BAD_PIR_SOURCE = "BadPIRSource"
BAD_MANAGED_IMAGE_SOURCE = "BadManagedImageSource"
BAD_SHARED_IMAGE_VERSION_SOURCE = "BadSharedImageVersionSource"
BAD_CUSTOMIZER_TYPE = "BadCustomizerType"
NO_CUSTOMIZER_SCRIPT = "NoCustomizerScript"
BAD_VALIDATOR_TYPE = "BadValidatorType"
NO_VALIDATOR_SCRIPT = "NoValidatorScript"
BAD_DISTRIBUTE_TYPE = "BadDistributeType"
BAD_SHARED_IMAGE_DISTRIBUTE = "BadSharedImageDistribute"
BAD_STAGING_RESOURCE_GROUP = "BadStagingResourceGroup"

# ARM's generic codes, where AIB has none of its own.
INVALID_REQUEST_CONTENT = "InvalidRequestContent"
INVALID_PARAMETER = "InvalidParameter"
MISSING_REQUIRED_PROPERTY = "MissingRequiredProperty"
LOCATION_REQUIRED = "LocationRequired"
INVALID_RESOURCE_NAME = "InvalidResourceName"
INVALID_API_VERSION = "InvalidApiVersionParameter"
PROPERTY_CHANGE_NOT_ALLOWED = "PropertyChangeNotAllowed"
INVALID_TEMPLATE = "InvalidTemplate"


class TemplateError(Exception):
    """A template, update or trigger body that cannot be accepted.

    `target` is the JSON path of the offending value in the request body
    (`properties.customize[2].inline`), `details` lists every problem found when there are several.
    """

    def __init__(
        self,
        code: str,
        message: str,
        target: str | None = None,
        details: list[TemplateError] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" (at {target})" if target else ""))
        self.code = code
        self.message = message
        self.target = target
        self.details: list[TemplateError] = list(details or [])

    def to_arm(self) -> dict[str, Any]:
        """ARM's error body: `{"error": {"code", "message", "target", "details": [...]}}`."""
        return {"error": self._body()}

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            body["target"] = self.target
        body["details"] = [d._body() for d in self.details]
        return body

    def __repr__(self) -> str:
        return f"TemplateError(code={self.code!r}, target={self.target!r}, message={self.message!r})"
