"""`aib lint FILE`: the API's own validation of a template, offline (`imagebuilder.template`), plus
warnings the API lets through: unknown members it ignores (with the member probably meant, from the
template package's did-you-mean), and external scripts or files without a `sha256Checksum` (a changed
download would go unnoticed, and the build cannot be reproduced)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagebuilder.template import TemplateError, parse_template


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    code: str
    message: str
    target: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "target": self.target}

    def line(self) -> str:
        where = f" [{self.target}]" if self.target else ""
        return f"{self.severity}: {self.code}{where}: {self.message}"


def _errors(exc: TemplateError) -> list[Finding]:
    found = [Finding("error", d.code, d.message, d.target) for d in exc.details]
    return found or [Finding("error", exc.code, exc.message, exc.target)]


def _unverified(body: dict[str, Any]) -> list[Finding]:
    props = body.get("properties") if isinstance(body, dict) else None
    props = props if isinstance(props, dict) else {}
    validate = props.get("validate")
    validators = validate.get("inVMValidations") if isinstance(validate, dict) else None
    groups = [("customize", props.get("customize")), ("validate.inVMValidations", validators)]
    found = []
    for path, items in groups:
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            for member in ("scriptUri", "sourceUri"):
                uri = item.get(member)
                if uri and not item.get("sha256Checksum"):
                    found.append(
                        Finding(
                            "warning",
                            "MissingChecksum",
                            f"{member} {str(uri).split('?')[0]} has no sha256Checksum: a changed download "
                            "would go unnoticed; add its sha256 (sha256sum FILE)",
                            f"properties.{path}[{i}].sha256Checksum",
                        )
                    )
    return found


def lint(body: Any) -> list[Finding]:
    """The unknown members the API ignores (with the member probably meant), every error the API
    would answer, then the other warnings."""
    findings: list[Finding] = []
    ignored: list[Any] = []
    errors: list[Finding] = []
    try:
        parse_template(body, warnings=ignored)
    except TemplateError as exc:
        errors = _errors(exc)
    # an unknown member first: a misspelt one is often why a required member is missing
    for member in ignored:
        findings.append(Finding("warning", "UnknownMember", member.message, member.target))
    findings += errors
    if isinstance(body, dict):
        findings += _unverified(body)
    return findings
