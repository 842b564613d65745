"""Stepping into builds on this machine (the local side of `aib shell`, `aib cleanup` and `aib try`).

- `shell(run_dir)`: a shell (or one command) in the build root a failed run kept (errorHandling
  onCustomizerError `abort`), inside the same bubblewrap sandbox the steps ran in (`sandbox`), network off
  unless asked. Changes made there stay in the kept root; it is never captured.
- `cleanup(run_dir)`: release and remove a kept run folder (the sweeper never removes one: see `sweep`).
- `try_step(template, step)`: run customizer N of a template against the locally cached base through the
  provider's own phases (the steps before it from the step cache when it has them; N itself always
  runs), no runtime or store, and report the files it added, changed or removed.

A kept run folder carries `kept.json` (`mark_kept`). Run as `python -m imagebuilder.providers.local.debug
shell|cleanup|try ...` (what `aib` does: the CLI itself imports nothing of the provider). Errors:
`DebugError` (a ProviderError whose message says what to do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import BuildInput, RunRef
from imagebuilder.providers.base import NullLog, ProviderError, read_template
from imagebuilder.providers.local import proc, sandbox
from imagebuilder.providers.local.layout import safe_name

KEPT_MARKER = "kept.json"


class DebugError(ProviderError):
    """A debugging command cannot do what was asked (no kept root, a run still active, ...)."""


# ------------------------------------------------------------------------------------------ kept roots
def mark_kept(run_dir: Path, reason: str = "errorHandling abort", *, owner: str | None = None) -> None:
    """Record that this run folder is kept on purpose until `cleanup` or the deletion of its template
    `owner` (the sweeper leaves it alone)."""
    marker = run_dir / KEPT_MARKER
    if run_dir.is_dir() and not marker.exists():
        record = {"reason": reason, "since": time.time(), "owner": owner}
        marker.write_text(json.dumps(record) + "\n")


def kept_of(runs_dir: Path, template_id: str) -> list[Path]:
    """The kept run folders under `runs_dir` (<state>/local/runs) whose template is `template_id`."""
    found = []
    for marker in sorted(runs_dir.glob(f"*/{KEPT_MARKER}")) if runs_dir.is_dir() else []:
        try:
            owner = json.loads(marker.read_text()).get("owner")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(owner, str) and owner.lower() == template_id.lower():
            found.append(marker.parent)
    return found


def is_kept(run_dir: Path) -> bool:
    return (run_dir / KEPT_MARKER).is_file()


def _mounted_under(folder: Path) -> list[str]:
    base = str(folder)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [ln.split()[4].encode().decode("unicode_escape") for ln in lines if len(ln.split()) > 4]
    return [m for m in points if m == base or m.startswith(base + "/")]


def kept_run(run_dir: Path) -> Path:
    """The kept run folder `run_dir` (checked: a run folder of the local provider, with a plain build root
    no running step has mounted); returns its build root."""
    run_dir = Path(os.path.realpath(run_dir))
    if run_dir.parent.name != "runs" or run_dir.parent.parent.name != "local":
        raise DebugError(
            f"{run_dir} is not a run folder of the local provider (<state>/local/runs/<run>)",
            hint="give the folder `aib` printed, or use `aib shell -g RG -n NAME RUN`",
        )
    root = run_dir / "build" / "root"
    if not root.is_dir():
        raise DebugError(
            f"{run_dir} has no kept build root (already cleaned up, or the run did not keep it)",
            hint='build roots are kept when a customizer fails with errorHandling.onCustomizerError "abort"',
        )
    if _mounted_under(run_dir):
        raise DebugError(
            f"the build root under {run_dir} is still mounted: its run is still active",
            hint="wait for the run to end (aib show), then try again",
        )
    if not is_kept(run_dir):
        raise DebugError(
            f"{run_dir} was not kept on purpose (no {KEPT_MARKER}): it belongs to a run being cleaned up",
            hint="the sweeper removes such folders; only kept build roots can be entered or cleaned",
        )
    return root


def shell(run_dir: Path, *, command: str | None = None, network: bool = False) -> int:
    """A shell in the kept build root, in the steps' own sandbox (`sandbox.step_argv`: the same
    namespaces, confinement, filter and limits); returns its exit code."""
    run_dir = Path(os.path.realpath(run_dir))
    root = kept_run(run_dir)
    argv_in = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh", "-i"]
    env = {"TERM": os.environ.get("TERM", "dumb"), "PS1": f"[aib shell {run_dir.name[:40]}] # "}
    inbox = run_dir / "inbox"
    with sandbox.step_argv(
        root,
        argv_in,
        network=network,
        inbox=inbox if inbox.is_dir() else None,
        run_marker=run_dir.name,
        env=env,
    ) as (argv, pass_fds):
        return proc.interactive(argv, pass_fds=pass_fds)


def cleanup(run_dir: Path) -> list[str]:
    """Remove a kept run folder (its processes, mounts and loop devices first); returns what went."""
    from imagebuilder.providers.local import sweep  # sweep imports this module for `is_kept`

    run_dir = Path(os.path.realpath(run_dir))
    kept_run(run_dir)
    report = sweep.SweepReport()
    if not sweep.release(run_dir, report):
        raise DebugError(f"mounts remain under {run_dir}: {'; '.join(report.errors)}", hint="unmount them")
    shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.exists():
        raise DebugError(f"cannot remove {run_dir}", hint="check its permissions")
    return [*report.removed, f"run folder {run_dir}"]


# ------------------------------------------------------------------------------------------- try step
@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link: str


def snapshot(root: Path) -> dict[str, Entry]:
    """Every path under `root` (as the image sees it) with what tells a change (never following links)."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
            link = os.readlink(full) if kind == "link" else ""
            rel = "/" + os.path.relpath(full, root)
            mtime = 0 if kind == "dir" else st.st_mtime_ns  # a directory's mtime changes with its entries
            out[rel] = Entry(
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if kind == "file" else 0,
                mtime,
                link,
            )
    return out


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def diff(before: dict[str, Entry], after: dict[str, Entry]) -> Diff:
    d = Diff()
    d.added = sorted(p for p in after if p not in before)
    d.removed = sorted(p for p in before if p not in after)
    d.changed = sorted(p for p in after if p in before and after[p] != before[p])
    return d


class _Out:
    """A LogSink printing to stdout (the tried step's output)."""

    uri = ""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def write(self, text: str) -> None:
        for line in text.splitlines():
            print(f"{self.prefix}{line}", flush=True)


def try_step(
    template: dict[str, Any], index: int, *, state_dir: Path, cache_dir: Path | None, name: str = "try"
) -> tuple[bool, Diff]:
    """Run customizers 0..index-1 (quietly) then `index` (output on stdout) in a throwaway build root of
    the local provider; returns (step succeeded, its file diff). Everything is removed afterwards."""
    from imagebuilder.providers.local.provider import LocalProvider

    count = len(read_template(template).properties.customizers)  # unreadable: names the field
    if not 0 <= index < count:
        raise DebugError(
            f"--step {index} is out of range: the template has {count} customizer(s)",
            hint=f"give 0..{count - 1}" if count else "add a customizer",
        )
    provider = LocalProvider(state_dir=state_dir, cache_dir=cache_dir)
    run_id = time.strftime("try%Y%m%d%H%M%S") + f"-{os.getpid()}"
    ref = RunRef(
        subscription_id="local", resource_group="aib-try", template_name=safe_name(name), run_id=run_id
    )
    build = BuildInput(run=ref, template=template)
    quiet = NullLog()
    try:
        prepared = provider.prepare(build, _Out("[prepare] "))
        if prepared.status != "succeeded":
            raise DebugError(f"prepare failed: {prepared.error.message if prepared.error else '?'}")
        # the build root is made for the steps before N only: the step cache may supply those (the
        # longest cached prefix is mounted), never N itself, which always runs (and is not stored)
        # the steps before N as the file spells them: the step cache hashes each step's JSON as stored
        raw = template.get("properties") or {}
        props = {**raw, "customize": list(raw.get("customize") or [])[:index]}
        before_n = build.model_copy(update={"template": {**template, "properties": props}})
        env = provider.create_build_env(before_n, prepared, quiet)
        for i in range(index):
            before_step = provider.customize(build, env, i, quiet)
            cache = before_step.details.get("cache") or {}
            hit = " (from the step cache)" if cache.get("hit") else ""
            print(
                f"customize[{i}]: {before_step.status} in {before_step.duration_seconds:.1f}s{hit}",
                flush=True,
            )
            if before_step.status == "failed":
                raise DebugError(
                    f"customize[{i}] failed before the step tried: "
                    f"{before_step.error.message if before_step.error else ''}",
                    hint=f"try --step {i} first",
                )
        root = provider.layout(build).root
        before = snapshot(root)
        print(f"--- customize[{index}] output", flush=True)
        result = provider.customize(build, env, index, _Out())
        after = snapshot(root)
        print(f"--- customize[{index}]: {result.status} in {result.duration_seconds:.1f}s", flush=True)
        if result.status == "failed" and result.error is not None:
            print(result.error.message, flush=True)
        return result.status == "succeeded", diff(before, after)
    finally:
        provider.cleanup(build, keep=False, log=quiet)


# ------------------------------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagebuilder.providers.local.debug")
    sub = p.add_subparsers(dest="cmd", required=True)
    sh = sub.add_parser("shell")
    sh.add_argument("run_dir", type=Path)
    sh.add_argument("--network", action="store_true")
    sh.add_argument("--command")
    cl = sub.add_parser("cleanup")
    cl.add_argument("run_dir", type=Path)
    tr = sub.add_parser("try")
    tr.add_argument("file", type=Path)
    tr.add_argument("--step", type=int, required=True)
    tr.add_argument("--state-dir", type=Path, default=Path(".state"))
    tr.add_argument("--cache-dir", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "shell":
            if args.command is None:
                print(
                    f"kept build root of {args.run_dir.name}; network {'on' if args.network else 'off'}; "
                    "exit to leave (changes stay in the kept root, never in an image)",
                    file=sys.stderr,
                )
            return shell(args.run_dir, command=args.command, network=args.network)
        if args.cmd == "cleanup":
            for line in cleanup(args.run_dir):
                print(f"removed {line}")
            return 0
        template = json.loads(args.file.read_text())
        cache_dir = args.cache_dir or (
            Path(os.environ["IMAGEBUILDER_CACHE_DIR"]) if os.environ.get("IMAGEBUILDER_CACHE_DIR") else None
        )
        ok, d = try_step(
            template, args.step, state_dir=args.state_dir, cache_dir=cache_dir, name=args.file.stem
        )
        print(f"files: {len(d.added)} added, {len(d.changed)} changed, {len(d.removed)} removed")
        for mark, paths in (("A", d.added), ("M", d.changed), ("D", d.removed)):
            for path in paths:
                print(f"{mark} {path}")
        return 0 if ok else 1
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
