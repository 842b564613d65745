"""A durable blueprint in its own module, registered by function_app.py (samples-v2/blueprint usage)."""

import logging

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()


@bp.route(route="startOrchestrator")
@bp.durable_client_input(client_name="client")
async def start_orchestrator(req: func.HttpRequest, client):
    instance_id = await client.start_new("bp_orchestrator")
    logging.info(f"Started orchestration with ID = '{instance_id}'.")
    return client.create_check_status_response(req, instance_id)


@bp.orchestration_trigger(context_name="context")
def bp_orchestrator(context: df.DurableOrchestrationContext):
    first = yield context.call_activity("bp_greet", "Oslo")
    second = yield context.call_activity("bp_greet", "Lima")
    return [first, second]


@bp.activity_trigger(input_name="city")
def bp_greet(city: str) -> str:
    return f"Hi {city}!"
