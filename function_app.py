"""Composition root: one DFApp, one blueprint per module. Nothing else belongs here."""

import azure.durable_functions as df
import azure.functions as func

from activities import (
    build_slots,
    capture,
    cleanup,
    create_env,
    customize,
    distribute,
    generalize,
    poll,
    prepare,
    run_status,
    template_lifecycle,
    validate,
)
from api import async_operations, operations, runs, templates, triggers
from dashboard import pages as dashboard_pages
from orchestrators import build_image, distribute_image, provision_template
from triggers import evaluation, slot_settler, sweeper, uploads

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (
    operations.bp,
    templates.bp,
    runs.bp,
    triggers.bp,
    async_operations.bp,
    build_image.bp,
    distribute_image.bp,
    provision_template.bp,
    template_lifecycle.bp,
    prepare.bp,
    create_env.bp,
    customize.bp,
    validate.bp,
    generalize.bp,
    capture.bp,
    distribute.bp,
    cleanup.bp,
    run_status.bp,
    build_slots.bp,
    poll.bp,
    evaluation.bp,
    uploads.bp,
    sweeper.bp,
    slot_settler.bp,
    dashboard_pages.bp,
):
    app.register_functions(blueprint)
