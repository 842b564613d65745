"""A web dashboard of image builds, served by the function app itself (HTTP functions under /dashboard):
templates, runs, a run's timeline and live log, outputs, and the run / cancel actions, behind the function
key exchanged for a session cookie. Uses the store, the template schema and `api._builds`; no provider."""
