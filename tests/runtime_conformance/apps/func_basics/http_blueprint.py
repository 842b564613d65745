"""A plain (non-durable) blueprint, registered by function_app.py."""

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="bp/{name}", auth_level=func.AuthLevel.ANONYMOUS)
def bp_hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        f"blueprint says hi to {req.route_params['name']}",
        headers={"X-Sample": "blueprint"},
        status_code=200,
    )
