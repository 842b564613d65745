"""Sample HTTP app for the local runtime tests: routes, constraints, methods, auth levels, outputs."""

import asyncio
import json
import logging

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="hello/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def hello(req: func.HttpRequest) -> func.HttpResponse:
    logging.info("saying hello to %s", req.route_params["name"])
    return func.HttpResponse(f"Hello, {req.route_params['name']}!", mimetype="text/plain")


@app.route(route="items/{id:int}", methods=["GET", "PUT"], auth_level=func.AuthLevel.ANONYMOUS)
def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"kind": "int", "id": req.route_params["id"], "method": req.method}),
        mimetype="application/json",
    )


@app.route(route="items/{slug:alpha}", auth_level=func.AuthLevel.ANONYMOUS)
def item_by_slug(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"kind": "alpha", "slug": req.route_params["slug"]}))


@app.route(route="files/{*rest}", auth_level=func.AuthLevel.ANONYMOUS)
def files(req: func.HttpRequest) -> str:
    return "rest=" + req.route_params.get("rest", "")


@app.route(route="opt/{a}/{b?}", auth_level=func.AuthLevel.ANONYMOUS)
def optional(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")


@app.route(route="echo", methods=["POST"])
async def echo(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    body = req.get_body()
    return func.HttpResponse(
        json.dumps(
            {
                "len": len(body),
                "params": dict(req.params),
                "header": req.headers.get("x-test"),
                "url": req.url,
                "json": req.get_json() if req.headers.get("content-type") == "application/json" else None,
            }
        ),
        status_code=201,
        headers={"X-Echo": "yes"},
        mimetype="application/json",
    )


@app.route(route="admin-only", auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> str:
    return "admin ok"


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret detail that must not leak")


@app.route(route="named", auth_level=func.AuthLevel.ANONYMOUS)
@app.generic_output_binding(arg_name="resp", type="http")
def named_output(req: func.HttpRequest, resp: func.Out[func.HttpResponse], context: func.Context) -> None:
    resp.set(func.HttpResponse(f"{context.function_name} {bool(context.invocation_id)}", status_code=202))


@app.route(route="nothing", auth_level=func.AuthLevel.ANONYMOUS)
def nothing(req: func.HttpRequest) -> None:
    return None


@app.route(route="wrong-type", auth_level=func.AuthLevel.ANONYMOUS)
def wrong_type(req: func.HttpRequest) -> dict:
    return {"not": "encodable"}


@app.route(route="sleepy", auth_level=func.AuthLevel.ANONYMOUS)
def sleepy(req: func.HttpRequest) -> str:
    import time

    time.sleep(120)  # longer than any test: shutdown must not wait for it
    return "woke up"
