"""Point the official `azure-mgmt-imagebuilder` client at this service instead of Azure.

Only the endpoint changes: the SDK's models, operations and long-running-operation pollers
(`begin_create_or_update`, `begin_run`, `begin_cancel`, `begin_delete`, `begin_update`) work as they do
against management.azure.com. Three things differ from Azure:

* `base_url`: the Functions app (`http://127.0.0.1:7071` for `python -m local_runtime start`, or
  `https://<app>.azurewebsites.net` on Azure); routes are ARM's paths (routePrefix is "").
* Authentication: the app's HTTP functions use function keys (auth level FUNCTION). `FunctionKeyPolicy`
  sends the key as the `x-functions-key` header on every request, polls included. The local runtime keeps
  its keys in `<state dir>/keys.json` (`functionKeys.default`); on Azure, use a function or host key.
* The credential: the SDK requires one. Locally `LocalCredential` satisfies it without Azure (no token is
  sent: the bearer-token policy, which refuses plain http, is replaced by the key policy). For an https
  endpoint pass a real credential if you want the bearer token sent too; the key header is added either way.

Run: `python examples/sdk_client.py --endpoint http://127.0.0.1:7071 --key <function key>` lists the
templates of a subscription and shows one template's last run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import HeadersPolicy, SansIOHTTPPolicy
from azure.mgmt.imagebuilder import ImageBuilderClient

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class FunctionKeyPolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Adds the Functions key header to every request the client sends (including LRO polls)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self._key = key

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        request.http_request.headers["x-functions-key"] = self._key


class LocalCredential(TokenCredential):
    """A credential that satisfies the SDK's constructor without Azure; its token is never checked."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("local-no-azure", int(time.time()) + 3600)


def make_client(
    endpoint: str,
    function_key: str,
    subscription_id: str,
    *,
    credential: TokenCredential | None = None,
    polling_interval: float = 1.0,
    **kwargs: Any,
) -> ImageBuilderClient:
    """An `ImageBuilderClient` for this service at `endpoint`, authenticating with `function_key`.

    Plain http is accepted only for localhost (a key must not cross a network in clear text).
    """
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"endpoint {endpoint!r} is not an http(s) URL; e.g. http://127.0.0.1:7071")
    if url.scheme == "http" and url.hostname not in LOCAL_HOSTS:
        raise ValueError(f"endpoint {endpoint!r} uses plain http off this machine; use https")
    if url.scheme == "http" or credential is None:
        # No bearer token (the SDK's bearer policy refuses plain http): the key policy takes its place.
        kwargs["authentication_policy"] = FunctionKeyPolicy(function_key)
    else:
        # https with a real credential: the bearer token as usual, plus the key on every request.
        kwargs["headers_policy"] = HeadersPolicy(base_headers={"x-functions-key": function_key})
    return ImageBuilderClient(
        credential=credential or LocalCredential(),
        subscription_id=subscription_id,
        base_url=endpoint.rstrip("/"),
        polling_interval=polling_interval,
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:7071")
    parser.add_argument("--key", required=True, help="a function key (local: <state dir>/keys.json)")
    parser.add_argument("--subscription", default="00000000-0000-0000-0000-000000000000")
    args = parser.parse_args()
    client = make_client(args.endpoint, args.key, args.subscription)
    for template in client.virtual_machine_image_templates.list():
        status = template.last_run_status
        state = f"{status.run_state} {status.run_sub_state or ''}".strip() if status else "never run"
        print(f"{template.id}: {template.provisioning_state}, last run: {state}")


if __name__ == "__main__":
    main()
