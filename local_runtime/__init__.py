"""A local host for Python v2 Azure Functions apps: HTTP, timers, blobs, queues and Durable Functions.

It knows nothing of image building; it runs any `function_app.py` the way the Azure Functions host would.
"""
