"""Fetching every `scriptUri`/`sourceUri` of a template into the run's staging area, checksummed.

Schemes: `https://` and `http://` (plain GET; blob URLs of our storage go through the `blob_fetcher` the
provider was given, so private containers work), and `file://`, allowed only below an allow-listed root:
the folders in `IMAGEBUILDER_LOCAL_FILE_ROOT` (os.pathsep-separated) and the repository's `examples/`.
A `sha256Checksum` mismatch names the field, the URI and both sums. SAS query strings never reach logs
or error messages (`display_uri`, `scrub`). Redirects may lead only to http(s) (never file://, ftp://);
a download larger than `MAX_BYTES` stops there (Content-Length is checked first).

Exceptions::

    ProviderError (providers.base)
    ├── ArtifactError             permanent: bad scheme, not allowed, 404, checksum mismatch (.code, .field)
    └── TransientProviderError    a connection failure, a timeout, HTTP 408/429/5xx (retry)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.artifacts import build_artifacts
from imagebuilder.pipeline.messages import StagedArtifact
from imagebuilder.providers.base import LogSink, ProviderError, TransientProviderError
from imagebuilder.providers.local.layout import safe_name
from imagebuilder.template.models import ImageTemplate

FILE_ROOT_ENV = "IMAGEBUILDER_LOCAL_FILE_ROOT"
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
MAX_BYTES = 8 * 1024**3
HTTP_TIMEOUT = 60.0
CHUNK = 1024 * 1024

BlobFetcher = Callable[[str], bytes]
_SECRETS = (
    re.compile(r"([?&](?:sig|signature|code)=)[^&\s#\"'<>]+", re.IGNORECASE),
    re.compile(r"((?:AccountKey|SharedAccessKey)=)[^;\s\"'<>]+", re.IGNORECASE),
)


def scrub(text: str) -> str:
    """`text` with SAS signatures, `code=` keys and account keys replaced by <redacted> (for logs and
    error messages that may quote a URL or an exception's text)."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group(1) + "<redacted>", text)
    return text


class ArtifactError(ProviderError):
    """A scriptUri/sourceUri that cannot be used; `field` is its JSON path in the template."""

    def __init__(self, code: str, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(scrub(message), hint=hint)
        self.code = code
        self.field = field


@dataclass(frozen=True)
class ArtifactRef:
    """One URI the template asks for, with where it is in the template."""

    field: str
    uri: str
    sha256: str

    @property
    def staged_name(self) -> str:
        return staged_name(self.uri)


def staged_name(uri: str) -> str:
    """The file name of a URI in the staging area: stable, so later steps find it from the template."""
    base = urllib.parse.urlsplit(uri).path.rsplit("/", 1)[-1]
    return f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{safe_name(base or 'artifact', limit=48)}"


def display_uri(uri: str) -> str:
    """The URI without its query string (SAS tokens are secrets)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.query:
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "<query hidden>", ""))
    return uri


def collect(template: ImageTemplate) -> list[ArtifactRef]:
    """Every file the build fetches (`pipeline.artifacts.build_artifacts`: customize,
    inVMValidations, optimize.workload), in template order, checksums lower-cased."""
    return [
        ArtifactRef(ref.target, ref.uri, (ref.sha256 or "").strip().lower())
        for ref in build_artifacts(template)
    ]


def file_roots(setting: str = "") -> list[Path]:
    """Folders a `file://` URI may read: those in the setting's value (os.pathsep-separated), then the
    repository's `examples/`, all as real paths."""
    roots = [Path(p) for p in setting.split(os.pathsep) if p.strip()]
    roots.append(EXAMPLES_DIR)
    return [Path(os.path.realpath(r)) for r in roots]


def _is_blob_url(parts: urllib.parse.SplitResult) -> bool:
    host = (parts.hostname or "").lower()
    if host.endswith(".blob.core.windows.net"):
        return True
    first = parts.path.lstrip("/").split("/", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1") and first == "devstoreaccount1"


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_all(
    refs: Sequence[ArtifactRef],
    dest_dir: Path,
    *,
    blob_fetcher: BlobFetcher | None,
    log: LogSink,
    roots: Sequence[Path] = (),
) -> list[StagedArtifact]:
    """Fetch each ref into `dest_dir` (idempotent: a staged file with the right sum is kept) and check
    its checksum; `file://` URIs only below `roots` (see `file_roots`). Raises `ArtifactError`
    (permanent) or `TransientProviderError`."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    staged: list[StagedArtifact] = []
    seen: dict[str, StagedArtifact] = {}
    for ref in refs:
        if ref.sha256 and (len(ref.sha256) != 64 or any(c not in "0123456789abcdef" for c in ref.sha256)):
            where = ref.field.rsplit(".", 1)[0] + ".sha256Checksum"
            raise ArtifactError(
                "InvalidChecksum",
                where,
                f"{where} {ref.sha256!r} (for {ref.field}) is not 64 hex digits",
                hint="give the output of `sha256sum FILE` or leave sha256Checksum empty",
            )
        key = ref.uri + "\x00" + ref.sha256
        if key in seen:
            staged.append(seen[key])
            continue
        target = dest_dir / ref.staged_name
        if not (target.is_file() and (not ref.sha256 or _hash_file(target) == ref.sha256)):
            _fetch_one(ref, target, roots=roots, blob_fetcher=blob_fetcher, log=log)
        actual = _hash_file(target)
        if ref.sha256 and actual != ref.sha256:
            target.unlink(missing_ok=True)
            raise ArtifactError(
                "ChecksumMismatch",
                ref.field,
                f"sha256 checksum mismatch for {ref.field} {display_uri(ref.uri)}: "
                f"expected {ref.sha256}, actual {actual}",
                hint="update sha256Checksum to the sum of the file you mean, or fix the file at the URI",
            )
        log.write(
            f"staged {ref.field} {display_uri(ref.uri)} sha256={actual} ({target.stat().st_size} bytes)\n"
        )
        item = StagedArtifact(
            uri=display_uri(ref.uri), sha256=actual, size=target.stat().st_size, location=str(target)
        )
        seen[key] = item
        staged.append(item)
    return staged


def _fetch_one(
    ref: ArtifactRef, target: Path, *, roots: Sequence[Path], blob_fetcher: BlobFetcher | None, log: LogSink
) -> None:
    parts = urllib.parse.urlsplit(ref.uri)
    scheme = parts.scheme.lower()
    tmp = target.with_name(target.name + ".part")
    try:
        if scheme == "file":
            _copy_file(ref, parts, tmp, roots)
        elif scheme in ("http", "https"):
            if blob_fetcher is not None and _is_blob_url(parts):
                log.write(f"fetching {ref.field} from blob storage {display_uri(ref.uri)}\n")
                try:
                    data = blob_fetcher(ref.uri)
                except (LookupError, FileNotFoundError) as exc:
                    raise ArtifactError(
                        "ArtifactFetchFailed",
                        ref.field,
                        f"{ref.field} {display_uri(ref.uri)}: blob not found ({exc})",
                        hint="upload the blob first or fix the URI",
                    ) from exc
                except ArtifactError:
                    raise
                except Exception as exc:
                    raise TransientProviderError(
                        scrub(f"{ref.field} {display_uri(ref.uri)}: blob storage error: {exc}")
                    ) from exc
                if len(data) > MAX_BYTES:
                    raise ArtifactError(
                        "ArtifactTooLarge",
                        ref.field,
                        f"{ref.field} {display_uri(ref.uri)} is larger than {MAX_BYTES} bytes",
                        hint="use a smaller file",
                    )
                tmp.write_bytes(data)
            else:
                log.write(f"fetching {ref.field} {display_uri(ref.uri)}\n")
                _download(ref, tmp)
        else:
            raise ArtifactError(
                "UnsupportedUriScheme",
                ref.field,
                f"{ref.field} {display_uri(ref.uri)}: scheme {scheme or '(none)'!r} is not supported",
                hint="use an https://, http:// or file:// URI",
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy_file(ref: ArtifactRef, parts: urllib.parse.SplitResult, tmp: Path, roots: Sequence[Path]) -> None:
    if parts.netloc not in ("", "localhost"):
        raise ArtifactError(
            "UnsupportedUriScheme",
            ref.field,
            f"{ref.field} {display_uri(ref.uri)}: file:// URIs must name a local path (file:///abs/path)",
            hint="write file:///absolute/path",
        )
    source = Path(os.path.realpath(urllib.parse.unquote(parts.path)))
    if not any(source == r or r in source.parents for r in roots):
        raise ArtifactError(
            "ArtifactNotAllowed",
            ref.field,
            f"{ref.field} {display_uri(ref.uri)} is outside the folders file:// URIs may read "
            f"({', '.join(str(r) for r in roots)})",
            hint=f"put the file under one of them or add its folder to {FILE_ROOT_ENV}",
        )
    not_file = ArtifactError(
        "ArtifactFetchFailed",
        ref.field,
        f"{ref.field} {display_uri(ref.uri)}: no such file (or not a regular file)",
        hint="fix the path or create the file",
    )
    # Open without following a last-moment symlink or blocking on a FIFO, then check what was opened
    # (a component swapped for a symlink after the realpath check is caught by the fd's own path).
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise not_file from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise not_file
    with os.fdopen(fd, "rb") as src:
        opened = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
        if not any(opened == r or r in opened.parents for r in roots):
            raise ArtifactError(
                "ArtifactNotAllowed",
                ref.field,
                f"{ref.field} {display_uri(ref.uri)} changed while being read",
            )
        if st.st_size > MAX_BYTES:
            raise ArtifactError(
                "ArtifactTooLarge",
                ref.field,
                f"{ref.field} {display_uri(ref.uri)} is larger than {MAX_BYTES} bytes",
                hint="use a smaller file",
            )
        os.set_blocking(fd, True)
        with tmp.open("wb") as dst:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                dst.write(chunk)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http:// and https:// (urllib would also follow ftp://)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to a {scheme or 'relative'}:// URI refused", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """An opener with only the HTTP(S) handlers (no file://, ftp://, data:) and safe redirects."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _HttpOnlyRedirects(),
    ):
        opener.add_handler(handler)
    return opener


def _download(ref: ArtifactRef, tmp: Path) -> None:
    request = urllib.request.Request(ref.uri, headers={"User-Agent": "imagebuilder-local/1"})  # noqa: S310
    shown = display_uri(ref.uri)
    try:
        with _opener().open(request, timeout=HTTP_TIMEOUT) as resp, tmp.open("wb") as dst:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_BYTES:
                raise ArtifactError(
                    "ArtifactTooLarge",
                    ref.field,
                    f"{ref.field} {shown} is {length} bytes, more than the {MAX_BYTES} allowed",
                    hint="use a smaller file",
                )
            total = 0
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                total += len(chunk)
                if total > MAX_BYTES:
                    raise ArtifactError(
                        "ArtifactTooLarge",
                        ref.field,
                        f"{ref.field} {shown} is larger than {MAX_BYTES} bytes",
                        hint="use a smaller file",
                    )
                dst.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code in (408, 429) or exc.code >= 500:
            raise TransientProviderError(scrub(f"{ref.field} {shown}: HTTP {exc.code} {exc.reason}")) from exc
        raise ArtifactError(
            "ArtifactFetchFailed",
            ref.field,
            f"{ref.field} {shown}: HTTP {exc.code} {exc.reason}",
            hint="check that the URI is right and readable without credentials (or add a SAS token)",
        ) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise TransientProviderError(scrub(f"{ref.field} {shown}: cannot download: {exc}")) from exc
