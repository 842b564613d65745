"""An ASGI application served through func.AsgiFunctionApp (the FastAPI-on-Functions samples' shape, with a
plain ASGI callable so no web framework is needed): lifespan, path, query, body, status and headers."""

import json

import azure.functions as func


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = {
        "path": scope["path"],
        "method": scope["method"],
        "query": scope["query_string"].decode(),
        "body": body.decode(),
        "user_agent": dict(scope["headers"]).get(b"user-agent", b"").decode(),
    }
    status = 404 if scope["path"] == "/missing" else 201
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"x-asgi", b"yes")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


app = func.AsgiFunctionApp(app=asgi_app, http_auth_level=func.AuthLevel.ANONYMOUS)
