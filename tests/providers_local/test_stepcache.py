"""The step cache on real builds (BusyBox base, real overlays, real disks): a rebuild after a change to the
last customizer runs only that step and ships the same disk but for that change; damaged or partial
entries (truncated, altered, a writer killed with SIGKILL) are never used; eviction keeps the cache
under its cap; a cache on a full disk makes the build go on uncached with a warning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.pipeline.messages import BuildInput, RunOptions
from imagebuilder.providers.local import disk, stepcache
from imagebuilder.providers.local.provider import LocalProvider
from tests.providers_local.test_provider_support import (
    RecLog,
    assert_no_leaks,
    base_cache,
    build_input,
    file_root,
    provider,
)

_FIXTURES = (base_cache, file_root, provider)  # pytest fixtures used by name in this module

REMOVED = "/bin/vi"  # a BusyBox applet link the second step deletes (a whiteout in its layer)


def _steps(file_root: Path, marker: str) -> list[dict[str, Any]]:
    (file_root / "app.conf").write_text("key=value\n")
    return [
        {
            "type": "File",
            "name": "conf",
            "sourceUri": (file_root / "app.conf").as_uri(),
            "destination": "/tmp/app.conf",  # the build user can write /tmp only (as on AIB)
        },
        {
            "type": "Shell",
            "name": "expensive",
            "inline": [
                "sudo sh -c 'mkdir -p /opt/app && seq 1 20000 > /opt/app/data'",
                f"sudo rm -f {REMOVED}",
                "sudo sh -c 'rm -rf /etc/init.d && mkdir /etc/init.d && echo only > /etc/init.d/only'",  # opaque dir
            ],
        },
        {"type": "Shell", "name": "marker", "inline": [f"echo {marker} | sudo tee /marker"]},
    ]


def _build(p: LocalProvider, build: BuildInput, tmp: Path) -> tuple[list[Any], Path, str]:
    """prepare .. capture; returns the step results, the dumped root tree of the VHD, the log."""
    log = RecLog()
    prepared = p.prepare(build, log)
    assert prepared.status == "succeeded", prepared.error
    env = p.create_build_env(build, prepared, log)
    results = [p.customize(build, env, i, log) for i in range(len(build.template["properties"]["customize"]))]
    assert all(r.status == "succeeded" for r in results), [r.error for r in results]
    assert p.generalize(build, env, log).status == "succeeded"
    cap = p.capture(build, env, log)
    assert cap.status == "succeeded", cap.error
    vhd = Path(cap.image["vhd"])
    dump = tmp / f"dump-{build.run.run_id}"
    dump.mkdir()
    offset = disk.root_offset(vhd)
    subprocess.run(
        ["debugfs", "-R", f"rdump / {dump}", f"{vhd}?offset={offset}"], check=True, capture_output=True
    )
    p.cleanup(build, keep=False, log=log)
    assert_no_leaks(p, build)
    return results, dump, log.text


def _tree(root: Path) -> dict[str, bytes]:
    """Every path of a dumped disk tree with its content (/etc/fstab names the disk's own UUIDs)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = "/" + str(path.relative_to(root))
        if rel == "/etc/fstab":
            continue
        if path.is_symlink():
            out[rel] = b"->" + os.fsencode(os.readlink(path))
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = b"<dir>"
    return out


def _cache(details: dict[str, Any]) -> dict[str, Any]:
    cache = details["cache"]
    assert set(cache) >= {"id", "hit", "seconds"} and len(cache["id"]) == 64
    return dict(cache)


def test_changing_only_the_third_customizer_reruns_only_that_step(
    provider: LocalProvider, file_root: Path, tmp_path: Path
) -> None:
    first, tree1, _ = _build(
        provider, build_input({"customize": _steps(file_root, "one")}, run_id="r1"), tmp_path
    )
    assert [_cache(r.details)["hit"] for r in first] == [False, False, False]
    assert all(_cache(r.details)["stored"] for r in first)

    second, tree2, log2 = _build(
        provider, build_input({"customize": _steps(file_root, "two")}, run_id="r2"), tmp_path
    )
    c2 = [_cache(r.details) for r in second]
    assert [c["hit"] for c in c2] == [True, True, False]
    assert [c["id"] for c in c2[:2]] == [_cache(r.details)["id"] for r in first[:2]]
    assert c2[2]["id"] != _cache(first[2].details)["id"]
    assert f"cache hit {c2[0]['id']}" in log2 and f"cache hit {c2[1]['id']}" in log2 and "ran in" in log2

    # The shipped disks differ by that step's change only; the whiteout and the opaque dir came back.
    a, b = _tree(tree1), _tree(tree2)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"/marker"}
    assert (a["/marker"], b["/marker"]) == (b"one\n", b"two\n")
    assert REMOVED not in b and "/bin/sh" in b
    assert [k for k in b if k.startswith("/etc/init.d/")] == ["/etc/init.d/only"]  # rcS stays gone
    assert b["/opt/app/data"].count(b"\n") == 20000

    # Nothing changed: every step is a hit. A full rebuild (cache: off) runs them all again.
    third, _, _ = _build(
        provider, build_input({"customize": _steps(file_root, "two")}, run_id="r3"), tmp_path
    )
    assert [_cache(r.details)["hit"] for r in third] == [True, True, True]
    full = build_input({"customize": _steps(file_root, "two")}, run_id="r4")
    full = full.model_copy(update={"options": RunOptions(cache="off")})
    fourth, tree4, log4 = _build(provider, full, tmp_path)
    assert [_cache(r.details)["hit"] for r in fourth] == [False, False, False]
    assert "full rebuild requested" in log4
    assert _tree(tree4) == b


def test_the_cache_setting_off_runs_everything_and_stores_nothing(
    base_cache: Path, file_root: Path, tmp_path: Path
) -> None:
    p = LocalProvider(
        state_dir=tmp_path / "state",
        cache_dir=base_cache,
        environ={**os.environ, "IMAGEBUILDER_STEP_CACHE": "off"},
    )
    p.step_cache_dir = tmp_path / "steps"
    for run in ("r1", "r2"):
        results, _, _ = _build(p, build_input({"customize": _steps(file_root, "x")}, run_id=run), tmp_path)
        assert [_cache(r.details)["hit"] for r in results] == [False, False, False]
        assert not any(_cache(r.details)["stored"] for r in results)
    assert not (tmp_path / "steps").exists()


def test_damaged_entries_are_never_used_and_are_rebuilt(
    provider: LocalProvider, file_root: Path, tmp_path: Path
) -> None:
    steps = _steps(file_root, "m")
    first, tree1, _ = _build(provider, build_input({"customize": steps}, run_id="r1"), tmp_path)
    ids = [_cache(r.details)["id"] for r in first]
    cache_root = provider.step_cache_dir
    # truncate a file of step 2's entry; take the manifest of step 3's away (as a writer killed between
    # the rename and ... cannot, but a disk error can)
    data = cache_root / ids[1] / "layer" / "opt" / "app" / "data"
    with data.open("r+b") as fh:
        fh.truncate(100)
    (cache_root / ids[2] / "manifest.json").unlink()
    second, tree2, log = _build(provider, build_input({"customize": steps}, run_id="r2"), tmp_path)
    assert [_cache(r.details)["hit"] for r in second] == [True, False, False]
    assert f"entry {ids[1]} is damaged: checksum mismatch" in log
    assert _tree(tree2) == _tree(tree1)  # the truncated file was not used
    # rebuilt: the next run hits all three again
    third, _, _ = _build(provider, build_input({"customize": steps}, run_id="r3"), tmp_path)
    assert [_cache(r.details)["hit"] for r in third] == [True, True, True]


def test_a_writer_killed_mid_write_leaves_nothing_usable(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    for i in range(40):
        d = layer / f"d{i}"
        d.mkdir(parents=True)
        for j in range(500):
            (d / f"f{j}").write_text(f"{i}-{j}\n" * 50)
    cache = stepcache.StepCache(tmp_path / "steps", 10 * 1024**3)
    cache.root.mkdir()
    sid = "ab" * 32
    code = (
        "import sys; from pathlib import Path; from imagebuilder.providers.local import stepcache; "
        f"stepcache.StepCache(Path({str(cache.root)!r})).store({sid!r}, Path({str(layer)!r}), step='s')"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".tmp-") and (p / "layer").exists() for p in cache.root.iterdir()):
        assert time.monotonic() < deadline and writer.poll() is None, "the writer never started writing"
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert not (cache.root / sid).exists()
    assert cache.lookup(sid) is None
    assert [p.name for p in cache.root.iterdir() if p.name.startswith(".tmp-")]
    cache.sweep_partial()  # the writer is dead: its temporary folder goes
    assert list(cache.root.iterdir()) == []
    assert cache.store(sid, layer, step="s") and cache.lookup(sid) is not None


def test_eviction_keeps_the_cache_under_its_cap(tmp_path: Path) -> None:
    mib = 1024 * 1024
    cache = stepcache.StepCache(tmp_path / "steps", int(2.5 * mib))
    ids = [f"{i:064x}" for i in range(1, 5)]
    log = RecLog()
    for n, sid in enumerate(ids):
        layer = tmp_path / f"layer{n}"
        layer.mkdir()
        (layer / "blob").write_bytes(os.urandom(mib))
        assert cache.store(sid, layer, step=f"s{n}", log=log)
        time.sleep(0.01)
        if n == 1:
            assert cache.lookup(ids[0]) is not None  # used again: ids[1] is now the least recent
        assert cache.size() <= cache.cap
        if n == 2:  # ids[1] was the least recently used
            assert {sid for _, _, sid in cache.entries()} == {ids[0], ids[2]}
    assert {sid for _, _, sid in cache.entries()} == {ids[2], ids[3]}
    assert "evicted" in log.text


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill", "bs=64k"], capture_output=True, check=False)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_cache_on_a_full_disk_builds_uncached_with_a_warning(
    provider: LocalProvider, file_root: Path, tmp_path: Path, full_disk: Path
) -> None:
    provider.step_cache_dir = full_disk / "steps"
    results, tree, log = _build(
        provider, build_input({"customize": _steps(file_root, "f")}, run_id="r1"), tmp_path
    )
    assert all(r.status == "succeeded" for r in results)
    assert not any(_cache(r.details)["stored"] for r in results)
    assert "could not be cached" in log and "the build continues uncached" in log
    assert _tree(tree)["/marker"] == b"f\n"
    steps = full_disk / "steps"
    assert not steps.exists() or not [p for p in steps.iterdir() if not p.name.startswith(".")]


def test_step_ids_chain_over_parent_step_and_artifacts() -> None:
    base = stepcache.base_id({"id": "a:b:c:1"}, {"network": True})
    steps = [{"type": "Shell", "inline": ["x"]}, {"type": "Shell", "scriptUri": "https://h/s.sh"}]
    ids = stepcache.chain(base, steps, {"https://h/s.sh": "1" * 64})
    assert ids == stepcache.chain(
        base, [dict(reversed(list(s.items()))) for s in steps], {"https://h/s.sh": "1" * 64}
    )
    assert ids[1] != stepcache.chain(base, steps, {"https://h/s.sh": "2" * 64})[1]  # artifact changed
    assert ids[0] == stepcache.chain(base, steps, {"https://h/s.sh": "2" * 64})[0]
    other = stepcache.base_id({"id": "a:b:c:2"}, {"network": True})
    assert not set(ids) & set(stepcache.chain(other, steps, {}))  # the parent chain reaches the source
    assert json.loads(stepcache.canonical_json({"b": 1, "a": [2]})) == {"a": [2], "b": 1}


# Ids computed by the provider before it read the template as the model (each step's JSON as stored):
# existing cache entries are found only while these stay the same.
PINNED_BASE = "412008b7900ec2369dd36edef1a23567eb0b477582d11c7a4863eee3b8e038cc"
PINNED_IDS = [
    "fb6a096e9a9c93e9622ec3df7120dd868ae94b2306bbf229b2149ae6a05dff94",
    "6ac783c197d501ad7a6fdf969459d6d49733e298622a7540cc544522429c6f99",
    "e1838fe889de294b57dcf6312dc90ba59ec52b64668719eab1a45a8cc425dc7e",
]


def test_step_ids_of_an_existing_template_do_not_change(tmp_path: Path) -> None:
    steps = [
        {"type": "Shell", "name": "inline", "inline": ["echo a | sudo tee /opt/a"]},
        {"type": "Shell", "name": "script", "scriptUri": "https://h.example/s.sh", "sha256Checksum": "AB" * 32},
        {"type": "File", "name": "conf", "sourceUri": "https://h.example/app.conf",
         "destination": "/tmp/app.conf"},
    ]  # fmt: skip
    source = {
        "type": "PlatformImage",
        "id": "ImageBuilderLocal:busybox:stable:latest",
        "exact_version": "1.0.0",
    }
    base = stepcache.base_id(source, {"network": True, "buildUser": "packer"})
    assert base == PINNED_BASE
    shas = {"https://h.example/s.sh": "ab" * 32, "https://h.example/app.conf": "cd" * 32}
    ctx = LocalProvider(state_dir=tmp_path / "state").context(build_input({"customize": steps}))
    assert stepcache.chain(base, ctx.stored_customize, shas) == PINNED_IDS
    # why the JSON as stored is hashed: the model's dump lowers the checksum, which would change the ids
    dumped = [c.to_json() for c in ctx.template.properties.customizers]
    assert stepcache.chain(base, dumped, shas)[1] != PINNED_IDS[1]


CHILD = """
import json, sys
from pathlib import Path
from imagebuilder.pipeline.messages import BuildEnv, BuildInput
from imagebuilder.providers.local.provider import LocalProvider
from tests.providers_local.test_provider_support import RecLog
a = json.loads(sys.argv[1])
p = LocalProvider(state_dir=Path(a["state"]), cache_dir=Path(a["cache"]))
p.step_cache_dir = Path(a["steps"])
p.customize(BuildInput.model_validate(a["build"]), BuildEnv.model_validate(a["env"]), 0, RecLog())
"""


def test_a_process_killed_while_storing_a_step_leaves_no_usable_entry_and_the_retry_stores_it(
    provider: LocalProvider, tmp_path: Path
) -> None:
    many = "sudo sh -c 'mkdir -p /opt/many && cd /opt/many && for d in $(seq 1 30); do mkdir $d; for f in $(seq 1 400); do echo $d$f > $d/$f; done; done'"
    build = build_input({"customize": [{"type": "Shell", "inline": [many]}]}, run_id="k1")
    log = RecLog()
    env = provider.create_build_env(build, provider.prepare(build, log), log)
    args = {
        "state": str(provider.state_dir),
        "cache": str(provider.cache_dir),
        "steps": str(provider.step_cache_dir),
        "build": build.model_dump(mode="json"),
        "env": env.model_dump(mode="json"),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)], cwd=Path(__file__).resolve().parents[2]
    )
    steps = provider.step_cache_dir
    deadline = time.monotonic() + 300
    while not (steps.is_dir() and any(p.name.startswith(".tmp-") for p in steps.iterdir())):
        assert child.poll() is None and time.monotonic() < deadline, "the step was never being stored"
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)  # kill -9 while the entry is being written
    child.wait()
    sid = env.handle["step_ids"][0]
    assert not (steps / sid).exists()
    assert stepcache.StepCache(steps).lookup(sid) is None
    # The retried activity does not run the step again (its layer is complete) and stores it.
    again = provider.customize(build, env, 0, log)
    assert (
        again.status == "succeeded" and _cache(again.details)["stored"] and again.details["cache"]["resumed"]
    )
    assert "already ran before a restart" in log.text
    provider.cleanup(build, keep=False, log=log)
    # The next build reuses it, and no partial entry is left behind.
    results, tree, _ = _build(
        provider, build_input({"customize": [{"type": "Shell", "inline": [many]}]}, run_id="k2"), tmp_path
    )
    assert [_cache(r.details)["hit"] for r in results] == [True]
    assert _tree(tree)["/opt/many/30/400"] == b"30400\n"
    assert not [p for p in steps.iterdir() if p.name.startswith(".tmp-")]
