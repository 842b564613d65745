"""Composition root: one DFApp, one blueprint per module. Nothing else belongs here."""

import azure.durable_functions as df
import azure.functions as func

from api import operations

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (operations.bp,):
    app.register_functions(blueprint)
