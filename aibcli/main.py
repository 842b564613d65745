"""The `aib` command line: argument parsing and one function per verb (see the package docstring).

Exit codes: 0 success; 1 a failed or canceled run (or a server error); 2 bad input: a usage error, a
template the API (or `lint`) refuses, a missing endpoint or key. Errors print the API's code, target
and message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aibcli import config, follow
from aibcli.client import RUN_ID_HEADER, TERMINAL, ApiError, Client

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEBUG_MODULE = "imagebuilder.providers.local.debug"


class UsageError(Exception):
    """Bad input found by aib itself (a file that cannot be read, a run that does not exist)."""


# ----------------------------------------------------------------------------------------- parsing
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("json", "table"), default="table", help="output format")
    p.add_argument("--endpoint", help="the service's base URL (AIB_ENDPOINT); default: the local runtime")
    p.add_argument("--key", help="function key (AIB_KEY); default: the local runtime's")
    p.add_argument("--subscription", help="subscription id (AIB_SUBSCRIPTION); default all zeros")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="the local runtime's state directory (AIB_STATE_DIR; default ./.state)",
    )


def _template_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("-g", "--resource-group", required=required, help="resource group")
    p.add_argument("-n", "--name", required=required, help="image template name")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="aib", description="Image templates from the command line (after `az image builder`)."
    )
    sub = root.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, *, template: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if template:
            _template_args(p)
        return p

    p = verb("create", "create an image template from a JSON file (PUT)")
    p.add_argument("--image-template", required=True, type=Path, help="template JSON file")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the creation to finish")
    verb("show", "show an image template")
    p = verb("list", "list image templates", template=False)
    p.add_argument("-g", "--resource-group", help="only this resource group")
    p = verb("delete", "delete an image template")
    p.add_argument("--no-wait", action="store_true")
    p = verb("run", "run an image template (build an image)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="return at once with the run id")
    mode.add_argument("--follow", action="store_true", help="show phases and steps live, then the outputs")
    p.add_argument("--resume-from", metavar="RUN", help="resume the failed run RUN at its failed step")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step (the step cache is not used)")
    p = verb("cancel", "cancel the running build")
    p.add_argument("--no-wait", action="store_true")
    p = verb("show-runs", "show the run outputs of the last run")
    p.add_argument("--output-name", help="only this run output")
    p = verb("runs", "list every run of the template (state, times, failed step)")
    p = verb("logs", "print a run's customization.log")
    p.add_argument("run_id", nargs="?", metavar="RUN", help="run id (default: the last run)")
    p.add_argument("--follow", action="store_true", help="keep printing as the log grows until the run ends")

    out = sub.add_parser("output", help="the template's distribute targets").add_subparsers(
        dest="output_verb", required=True
    )
    p = out.add_parser("list", help="list the template's outputs (distribute targets)")
    _common(p)
    _template_args(p)

    trig = sub.add_parser("trigger", help="triggers of a template").add_subparsers(
        dest="trigger_verb", required=True
    )
    p = trig.add_parser("create", help="create a trigger")
    _common(p)
    _template_args(p)
    p.add_argument("--trigger-name", required=True, help="trigger name")
    p.add_argument("--kind", required=True, choices=("SourceImage", "Schedule"))
    p.add_argument("--schedule", help="NCRONTAB schedule (kind Schedule)")
    p.add_argument("--time-zone", help="IANA time zone of the schedule (kind Schedule)")
    for name in ("list", "show", "delete"):
        p = trig.add_parser(name, help=f"{name} trigger(s)")
        _common(p)
        _template_args(p)
        if name != "list":
            p.add_argument("--trigger-name", required=True)

    p = sub.add_parser("lint", help="validate a template file offline, with warnings")
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--output", choices=("json", "table"), default="table")

    p = verb("shell", "open a shell in a kept build root (local provider, this machine only)")
    p.add_argument("run_id", nargs="?", metavar="RUN", help="run id (default: the last run)")
    p.add_argument("--network", action="store_true", help="give the shell a network (off by default)")
    p.add_argument("--command", "-c", dest="shell_command", help="run this command instead of a shell")
    p = verb("cleanup", "remove a kept build root (local provider, this machine only)", template=False)
    _template_args(p, required=False)
    p.add_argument("run_id", nargs="?", metavar="RUN", help="run id (default: the last run)")
    p.add_argument("--run-dir", type=Path, help="the kept run folder itself (e.g. its run record is gone)")

    p = sub.add_parser("try", help="run one customizer of a template file locally, no runtime")
    p.add_argument("file", type=Path)
    p.add_argument("--step", type=int, required=True, help="index of the customizer (0-based)")
    p.add_argument("--state-dir", type=Path, help="where the try keeps its folders (default ./.state)")
    p.add_argument("--cache-dir", type=Path, help="base image cache (IMAGEBUILDER_CACHE_DIR)")
    return root


# ----------------------------------------------------------------------------------------- helpers
def _client(args: argparse.Namespace) -> tuple[Client, config.Target]:
    target = config.resolve(
        endpoint=args.endpoint, key=args.key, subscription=args.subscription, state_dir=args.state_dir
    )
    return Client(target.endpoint, target.key, target.subscription), target


def _emit(args: argparse.Namespace, data: Any, columns: Sequence[tuple[str, str]] = ()) -> None:
    if args.output == "json" or not columns:
        print(json.dumps(data, indent=2))
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(show_edge=False, pad_edge=False)
    for i, (title, _) in enumerate(columns):
        table.add_column(title, no_wrap=i == 0, overflow="fold")  # names and run ids are never cut
    for row in rows:
        table.add_row(*[_cell(_dig(row, path)) for _, path in columns])
    Console().print(table)


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


_ISO = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]00:00)?$")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and _ISO.match(value):
        m = _ISO.match(value)
        assert m is not None
        return f"{m.group(1)} {m.group(2)}Z"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


TEMPLATE_COLUMNS = (
    ("Name", "name"),
    ("Location", "location"),
    ("State", "properties.provisioningState"),
    ("LastRun", "properties.lastRunStatus.runState"),
    ("SubState", "properties.lastRunStatus.runSubState"),
)
RUN_COLUMNS = (
    ("Run", "name"),
    ("State", "properties.runState"),
    ("SubState", "properties.runSubState"),
    ("Start", "properties.startTime"),
    ("End", "properties.endTime"),
    ("Failed step", "properties.error.step"),
)
OUTPUT_COLUMNS = (
    ("Name", "name"),
    ("State", "properties.provisioningState"),
    ("ArtifactId", "properties.artifactId"),
    ("ArtifactUri", "properties.artifactUri"),
)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None


def _run_of(cl: Client, rg: str, name: str, run_id: str | None) -> dict[str, Any]:
    if run_id:
        return cl.run(rg, name, run_id)
    runs = cl.runs(rg, name)
    if not runs:
        raise UsageError(f"image template {name!r} has no runs yet")
    return runs[-1]


def _run_exit(state: str | None) -> int:
    return EXIT_OK if state in ("Succeeded", "PartiallySucceeded") else EXIT_FAILED


# ----------------------------------------------------------------------------------------- verbs
def cmd_create(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    body = _read_json(args.image_template)
    resp = cl.put_template(args.resource_group, args.name, body)
    if not args.no_wait:
        status = cl.wait_operation(resp)
        if status.get("status") != "Succeeded":
            err = status.get("error") or {}
            raise ApiError(400, str(err.get("code") or "Failed"), str(err.get("message") or status))
    _emit(args, cl.get_template(args.resource_group, args.name), TEMPLATE_COLUMNS)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    _emit(args, cl.get_template(args.resource_group, args.name), TEMPLATE_COLUMNS)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    _emit(args, cl.list_all(cl.templates_path(args.resource_group)), TEMPLATE_COLUMNS)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    resp = cl.request("DELETE", cl.template_path(args.resource_group, args.name))
    if not args.no_wait and resp.status_code == 202:
        status = cl.wait_operation(resp)
        if status.get("status") != "Succeeded":
            print(f"delete {status.get('status')}: {status.get('error')}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    rg, name = args.resource_group, args.name
    body: dict[str, Any] = {"resumeFromRunId": args.resume_from} if args.resume_from else {}
    if args.no_cache:
        body["cache"] = "off"
    resp = cl.start_run(rg, name, body or None)
    run_id = resp.headers.get(RUN_ID_HEADER)
    if args.no_wait:
        if args.output == "json":
            print(json.dumps({"runId": run_id, "operation": resp.headers.get("Azure-AsyncOperation")}))
        else:
            print(run_id or resp.headers.get("Azure-AsyncOperation", ""))
        return EXIT_OK
    if args.follow:
        if not run_id:
            raise UsageError("this service does not name the new run (no run id header): use `aib show`")
        final = follow.follow_run(cl, rg, name, run_id, console=Console())
        return _run_exit(_dig(final, "properties.runState"))
    status = cl.wait_operation(resp, timeout=24 * 3600)
    if run_id:
        run = cl.run(rg, name, run_id)
        _emit(args, run, RUN_COLUMNS)
        if _dig(run, "properties.runState") not in ("Succeeded", "PartiallySucceeded"):
            print(_dig(run, "properties.message") or "", file=sys.stderr)
        return _run_exit(_dig(run, "properties.runState"))
    template = cl.get_template(rg, name)
    _emit(args, template, TEMPLATE_COLUMNS)
    return EXIT_OK if status.get("status") == "Succeeded" else EXIT_FAILED


def cmd_cancel(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    resp = cl.request("POST", cl.template_path(args.resource_group, args.name) + "/cancel")
    if not args.no_wait:
        cl.wait_operation(resp)
    return EXIT_OK


def cmd_show_runs(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    path = cl.template_path(args.resource_group, args.name) + "/runOutputs"
    if args.output_name:
        _emit(args, cl.json("GET", f"{path}/{args.output_name}"), OUTPUT_COLUMNS)
    else:
        _emit(args, cl.list_all(path), OUTPUT_COLUMNS)
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    _emit(args, cl.runs(args.resource_group, args.name), RUN_COLUMNS)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    rg, name = args.resource_group, args.name
    run = _run_of(cl, rg, name, args.run_id)
    run_id = str(run["name"])
    shown = 0
    while True:
        text = cl.log(rg, name, run_id)
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        if not args.follow:
            return EXIT_OK
        state = _dig(cl.run(rg, name, run_id), "properties.runState")
        if state in TERMINAL:
            text = cl.log(rg, name, run_id)
            sys.stdout.write(text[shown:])
            return _run_exit(state)
        time.sleep(1.0)


def cmd_output_list(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    template = cl.get_template(args.resource_group, args.name)
    outputs = _dig(template, "properties.distribute") or []
    _emit(args, outputs, (("RunOutputName", "runOutputName"), ("Type", "type"), ("Location", "location")))
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    cl, _ = _client(args)
    base = cl.template_path(args.resource_group, args.name) + "/triggers"
    columns = (("Name", "name"), ("Kind", "properties.kind"), ("State", "properties.provisioningState"))
    if args.trigger_verb == "list":
        _emit(args, cl.list_all(base), columns)
        return EXIT_OK
    path = f"{base}/{args.trigger_name}"
    if args.trigger_verb == "show":
        _emit(args, cl.json("GET", path), columns)
    elif args.trigger_verb == "delete":
        resp = cl.request("DELETE", path)
        if resp.status_code == 202:
            cl.wait_operation(resp)
    else:
        props: dict[str, Any] = {"kind": args.kind}
        if args.schedule:
            props["schedule"] = args.schedule
        if args.time_zone:
            props["timeZone"] = args.time_zone
        resp = cl.request("PUT", path, {"properties": props})
        if resp.status_code in (201, 202):
            cl.wait_operation(resp)
        _emit(args, cl.json("GET", path), columns)
    return EXIT_OK


def cmd_lint(args: argparse.Namespace) -> int:
    from aibcli import lint  # imports the template models: only this verb pays for them

    findings = lint.lint(_read_json(args.file))
    if args.output == "json":
        print(json.dumps([f.as_json() for f in findings], indent=2))
    else:
        for f in findings:
            print(f.line())
        errors = sum(f.severity == "error" for f in findings)
        warnings = len(findings) - errors
        print(f"{args.file}: {errors} error(s), {warnings} warning(s)")
    return EXIT_BAD_INPUT if any(f.severity == "error" for f in findings) else EXIT_OK


def _kept(run: dict[str, Any]) -> list[str]:
    cleanup = _dig(run, "properties.details.cleanup") or {}
    return [str(k) for k in cleanup.get("kept") or []]


def _kept_root(run: dict[str, Any]) -> Path | None:
    for item in _kept(run):
        if item.startswith("build root "):
            return Path(item[len("build root ") :])
    return None


def _debug(argv: list[str], *, interactive: bool = False) -> int:
    """Run the local provider's debug module in a child process (this machine only)."""
    cmd = [sys.executable, "-m", DEBUG_MODULE, *argv]
    if interactive:
        return subprocess.call(cmd)
    return subprocess.run(cmd, check=False).returncode


def _local_root(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    cl, _ = _client(args)
    run = _run_of(cl, args.resource_group, args.name, args.run_id)
    root = _kept_root(run)
    if root is None:
        kept = _kept(run)
        if kept:  # another provider kept its build resources (e.g. the Azure build VM): say where
            print(f"run {run['name']} kept its build resources (not on this machine):")
            for item in kept:
                print(f"  {item}")
            print("reach the build VM through the Azure portal, Bastion or `az vm run-command`.")
        else:
            raise UsageError(
                f"run {run['name']} kept no build root (its state is {_dig(run, 'properties.runState')}); "
                'roots are kept only when a customizer fails with errorHandling.onCustomizerError "abort"'
            )
        return run, None
    if not root.is_dir():
        raise UsageError(
            f"the kept build root of run {run['name']} is {root} on the machine that ran the build, which is "
            "not this one (or it was cleaned up): `aib shell` and `aib cleanup` work only on that machine"
        )
    return run, root


def cmd_shell(args: argparse.Namespace) -> int:
    run, root = _local_root(args)
    if root is None:
        return EXIT_OK if _kept(run) else EXIT_BAD_INPUT
    argv = ["shell", str(root.parent.parent)]
    if args.network:
        argv.append("--network")
    if args.shell_command:
        argv += ["--command", args.shell_command]
    return _debug(argv, interactive=not args.shell_command)


def cmd_cleanup(args: argparse.Namespace) -> int:
    if args.run_dir:
        return _debug(["cleanup", str(args.run_dir.resolve())])
    if not (args.resource_group and args.name):
        raise UsageError("give -g RG -n NAME [RUN], or --run-dir DIR")
    run, root = _local_root(args)
    if root is None:
        return EXIT_OK if _kept(run) else EXIT_BAD_INPUT
    return _debug(["cleanup", str(root.parent.parent)])


def cmd_try(args: argparse.Namespace) -> int:
    argv = ["try", str(args.file.resolve()), "--step", str(args.step)]
    state = args.state_dir or Path(os.environ.get("AIB_STATE_DIR") or ".state")
    argv += ["--state-dir", str(state.resolve())]
    if args.cache_dir:
        argv += ["--cache-dir", str(args.cache_dir.resolve())]
    return _debug(argv)


VERBS = {
    "create": cmd_create,
    "show": cmd_show,
    "list": cmd_list,
    "delete": cmd_delete,
    "run": cmd_run,
    "cancel": cmd_cancel,
    "show-runs": cmd_show_runs,
    "runs": cmd_runs,
    "logs": cmd_logs,
    "output": cmd_output_list,
    "trigger": cmd_trigger,
    "lint": cmd_lint,
    "shell": cmd_shell,
    "cleanup": cmd_cleanup,
    "try": cmd_try,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except ApiError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.target:
            print(f"target: {exc.target}", file=sys.stderr)
        return EXIT_BAD_INPUT if 400 <= exc.status < 500 or exc.status == 0 else EXIT_FAILED
    except (config.ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
