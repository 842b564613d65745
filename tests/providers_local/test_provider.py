"""LocalProvider end to end on the BusyBox base: real sandbox, real files, real disks (no QEMU boots).

Covers every customizer and distributor kind, failures (customizer exit code and tail, checksum
mismatch, path escapes, timeouts), network off, sudo, capture contents, layering and leak checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagebuilder.pipeline.messages import CaptureResult
from imagebuilder.providers.local import disk
from imagebuilder.providers.local.provider import LocalProvider
from tests.providers_local.test_provider_support import (
    RecLog,
    assert_no_leaks,
    base_cache,
    build_input,
    file_root,
    http_server,
    mounts_under,
    provider,
    sha256,
)

_FIXTURES = (
    base_cache,
    file_root,
    provider,
)  # pytest fixtures used by name in this module

GALLERY_IMAGE = f"/subscriptions/{'0' * 8}-0000-0000-0000-0000000000aa/resourceGroups/imgs/providers/Microsoft.Compute/galleries/gal1/images/app"


def _run_to_capture(p: LocalProvider, build, log: RecLog) -> tuple:  # type: ignore[no-untyped-def]
    prepared = p.prepare(build, log)
    assert prepared.status == "succeeded", prepared.error
    env = p.create_build_env(build, prepared, log)
    steps = [
        p.customize(build, env, i, log) for i in range(len(build.template["properties"].get("customize", [])))
    ]
    return prepared, env, steps


def test_full_busybox_build_every_customizer_and_distributor(
    provider: LocalProvider, file_root: Path, tmp_path: Path
) -> None:
    script = b"#!/bin/sh\nset -e\necho from-file-script | sudo tee /opt/file-script.txt >/dev/null\necho script-ran\n"
    (file_root / "setup.sh").write_bytes(script)
    served = tmp_path / "served"
    served.mkdir()
    http_script = (
        b"sudo sh -c 'echo from-http-script > /opt/http-script.txt'\n"  # no shebang: runs with /bin/sh
    )
    (served / "web.sh").write_bytes(http_script)
    payload = b"key=value\n"
    (served / "app.conf").write_bytes(payload)
    log = RecLog()
    with http_server(served) as base_url:
        build = build_input(
            {
                "customize": [
                    {
                        "type": "Shell",
                        "name": "inline",
                        "inline": [
                            "sudo mkdir -p /opt",
                            "echo built | sudo tee /opt/inline.txt >/dev/null",
                            "sudo sh -c 'id -u > /opt/sudo-uid'",
                        ],
                    },
                    {
                        "type": "Shell",
                        "name": "file script",
                        "scriptUri": (file_root / "setup.sh").as_uri(),
                        "sha256Checksum": sha256(script),
                    },
                    {
                        "type": "Shell",
                        "name": "http script",
                        "scriptUri": f"{base_url}/web.sh",
                        "sha256Checksum": sha256(http_script).upper(),
                    },
                    {
                        "type": "File",
                        "name": "conf",
                        "sourceUri": f"{base_url}/app.conf",
                        "sha256Checksum": sha256(payload),
                        "destination": "/tmp/app.conf",
                    },
                    {
                        "type": "Shell",
                        "name": "place conf",
                        "inline": ["sudo mkdir -p /etc/app", "sudo mv /tmp/app.conf /etc/app/app.conf"],
                    },
                    {
                        "type": "Shell",
                        "name": "history",
                        "inline": ["echo secret | sudo tee /root/.ash_history"],
                    },
                ],
                "distribute": [
                    {
                        "type": "ManagedImage",
                        "runOutputName": "managed",
                        "imageId": f"/subscriptions/{'0' * 8}-0000-0000-0000-0000000000aa/resourceGroups/imgs/providers/Microsoft.Compute/images/app-image",
                        "location": "westus",
                    },
                    {
                        "type": "SharedImage",
                        "runOutputName": "gallery",
                        "galleryImageId": GALLERY_IMAGE,
                        "versioning": {"scheme": "Latest"},
                        "targetRegions": [
                            {"name": "westus", "replicaCount": 1},
                            {"name": "eastus2", "replicaCount": 2, "storageAccountType": "Premium_LRS"},
                        ],
                    },
                    {"type": "VHD", "runOutputName": "vhd"},
                ],
            }
        )
        prepared, env, steps = _run_to_capture(provider, build, log)
    assert [s.status for s in steps] == ["succeeded"] * 6, [s.error for s in steps]
    assert prepared.source is not None and prepared.source.exact_version
    assert prepared.source.exact_version != "latest"
    assert {a.sha256 for a in prepared.artifacts} == {sha256(script), sha256(http_script), sha256(payload)}
    # Output streamed into the log, prefixed with the step's name.
    assert "[customize[1] (Shell: file script)] script-ran\n" in log.text
    root = Path(env.handle["root"])
    assert (root / "opt/sudo-uid").read_text() == "0\n"
    # Steps ran as an unprivileged uid outside, yet what they made is root's on disk (idmapped root).
    assert (root / "opt/inline.txt").stat().st_uid == 0 and (root / "opt").stat().st_gid == 0
    assert (root / "etc/app/app.conf").read_bytes() == payload and not (root / "tmp/app.conf").exists()
    assert provider.validate(build, env, log).status == "skipped"

    gen = provider.generalize(build, env, log)
    assert gen.status == "succeeded"
    assert "/root/.ash_history" in gen.details["cleared"]["shell history"]
    assert not (root / "usr/sbin/policy-rc.d").exists()

    cap = provider.capture(build, env, log)
    assert cap.status == "succeeded", cap.error
    vhd = Path(cap.image["vhd"])
    info = disk.inspect_disk(vhd)
    assert info["format"] == "vpc"
    assert info["virtual_size"] % (1024 * 1024) == 0
    assert info["file_size"] == info["virtual_size"] + 512
    assert info["footer"]["cookie"] == "conectix" and info["footer"]["disk_type"] == 2
    assert info["partition_table"]["label"] == "gpt"
    assert info["root_offset"] == 1024 * 1024
    assert cap.image["sha256"] == sha256(vhd.read_bytes())
    assert cap.image["size"] == vhd.stat().st_size
    assert cap.image["generation"] == "V1"
    for path, content in {
        "/opt/inline.txt": b"built\n",
        "/opt/file-script.txt": b"from-file-script\n",
        "/opt/http-script.txt": b"from-http-script\n",
        "/etc/app/app.conf": payload,
        "/etc/machine-id": b"",
    }.items():
        assert disk.read_file_from_disk(vhd, path) == content, path
    assert disk.stat_in_disk(vhd, "/etc/app/app.conf")["mode"] == 0o644
    with pytest.raises(FileNotFoundError):
        disk.read_file_from_disk(vhd, "/root/.ash_history")
    with pytest.raises(FileNotFoundError):
        disk.read_file_from_disk(vhd, "/usr/sbin/policy-rc.d")
    assert disk.read_file_from_disk(vhd, "/etc/shadow").startswith(b"root:!")

    managed = provider.distribute(build, cap, 0, "westus", log)
    assert managed.status == "succeeded", managed.error
    assert managed.artifact_id and managed.artifact_id.endswith(
        "/providers/Microsoft.Compute/images/app-image"
    )
    assert managed.artifact_uri and managed.artifact_uri.startswith("file://")
    results = [provider.distribute(build, cap, 1, r, log) for r in ("westus", "eastus2")]
    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.error for r in results]
    assert {r.artifact_id for r in results} == {f"{GALLERY_IMAGE}/versions/1.0.0"}
    copies = [Path(r.artifact_uri.removeprefix("file://")) for r in results if r.artifact_uri]
    assert len({c.parent for c in copies}) == 2
    assert all(sha256(c.read_bytes()) == cap.image["sha256"] for c in copies)
    version_dir = copies[0].parent.parent
    meta = json.loads((version_dir / "version.json").read_text())
    assert meta["provisioningState"] == "Succeeded"
    assert meta["regions"]["eastus2"]["replicaCount"] == 2
    assert meta["regions"]["eastus2"]["storageAccountType"] == "Premium_LRS"
    # A retried replication activity is idempotent: same version, no second version.
    again = provider.distribute(build, cap, 1, "eastus2", log)
    assert again.artifact_id == results[1].artifact_id
    assert sorted(p.name for p in version_dir.parent.iterdir() if p.is_dir()) == ["1.0.0"]
    vhd_out = provider.distribute(build, cap, 2, "westus", log)
    assert vhd_out.status == "succeeded" and vhd_out.artifact_uri
    published = Path(vhd_out.artifact_uri.removeprefix("file://"))
    assert published.is_file() and published.is_relative_to(provider.state_dir / "vhds")
    assert disk.read_file_from_disk(published, "/opt/inline.txt") == b"built\n"

    report = provider.cleanup(build, keep=False, log=log)
    assert report.errors == []
    assert_no_leaks(provider, build)
    # Outputs outlive the run; cleanup is idempotent.
    assert published.is_file() and all(c.is_file() for c in copies)
    assert provider.cleanup(build, keep=False, log=log).errors == []


def test_failing_customizer_reports_exit_code_tail_and_log(provider: LocalProvider) -> None:
    build = build_input(
        {
            "customize": [
                {
                    "type": "Shell",
                    "name": "breaks",
                    "inline": [
                        *(f"echo line{i}" for i in range(30)),
                        "echo boom >&2",
                        "exit 7",
                        "echo never",
                    ],
                }
            ]
        }
    )
    log = RecLog()
    _prepared, _env, steps = _run_to_capture(provider, build, log)
    res = steps[0]
    assert res.status == "failed"
    assert res.exit_code == 7
    assert res.error is not None
    assert res.error.code == "CustomizerFailed"
    assert res.error.step == "customize[0] (Shell: breaks)"
    assert res.error.exit_code == 7
    assert res.error.log_tail[-1] == "boom" and len(res.error.log_tail) == 20
    assert "never" not in res.error.log_tail
    assert res.error.log_uri == log.uri
    assert "[customize[0] (Shell: breaks)] boom\n" in log.text
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_checksum_mismatch_names_both_sums_and_builds_nothing(
    provider: LocalProvider, file_root: Path
) -> None:
    (file_root / "s.sh").write_text("echo hi\n")
    wrong = "ab" * 32
    build = build_input(
        {
            "customize": [
                {"type": "Shell", "scriptUri": (file_root / "s.sh").as_uri(), "sha256Checksum": wrong}
            ]
        }
    )
    res = provider.prepare(build, RecLog())
    assert res.status == "failed" and res.error is not None
    assert res.error.code == "ChecksumMismatch"
    assert wrong in res.error.message
    assert sha256(b"echo hi\n") in res.error.message
    assert (file_root / "s.sh").as_uri() in res.error.message
    assert "properties.customize[0].scriptUri" in res.error.message
    layout = provider.layout(build)
    assert not layout.build.exists()
    assert list(layout.artifacts.iterdir()) == []
    provider.cleanup(build, keep=False, log=RecLog())
    assert_no_leaks(provider, build)


def test_file_uri_outside_allowed_roots_is_refused(provider: LocalProvider, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("x")
    build = build_input({"customize": [{"type": "File", "sourceUri": secret.as_uri(), "destination": "/x"}]})
    res = provider.prepare(build, RecLog())
    assert res.status == "failed" and res.error is not None
    assert res.error.code == "ArtifactNotAllowed"
    assert "IMAGEBUILDER_LOCAL_FILE_ROOT" in res.error.message


@pytest.mark.parametrize("dest", ["etc/relative", "/etc/../../../tmp/escape", "/"])
def test_file_destination_escapes_rejected_up_front(
    provider: LocalProvider, file_root: Path, dest: str
) -> None:
    (file_root / "f").write_text("x")
    build = build_input(
        {"customize": [{"type": "File", "sourceUri": (file_root / "f").as_uri(), "destination": dest}]}
    )
    res = provider.prepare(build, RecLog())
    assert res.status == "failed" and res.error is not None
    assert "properties.customize[0].destination" in res.error.message


@pytest.mark.parametrize("as_root", [True, False], ids=["root-tag", "build-user"])
def test_symlinks_in_the_image_cannot_lead_a_file_out_of_the_root(
    provider: LocalProvider, file_root: Path, tmp_path: Path, as_root: bool
) -> None:
    """As root (tag imagebuilder.local.buildUser=root, File writes anywhere) and as the build user."""
    (file_root / "f").write_text("payload")
    outside = tmp_path / "host-target"
    outside.mkdir()
    sudo = "" if as_root else "sudo "
    build = build_input(
        {
            "customize": [
                {
                    "type": "Shell",
                    "inline": [
                        f"{sudo}ln -s {outside} /opt-abs",
                        f"{sudo}ln -s ../../../../../.. /opt-rel",
                        f"{sudo}mkfifo /fifo",
                        # the build user's own links, into folders it may write in the image
                        f"{sudo}mkdir -p {outside} && {sudo}chmod 1777 {outside}",
                    ],
                },
                {"type": "File", "sourceUri": (file_root / "f").as_uri(), "destination": "/opt-abs/escaped"},
                {
                    "type": "File",
                    "sourceUri": (file_root / "f").as_uri(),
                    "destination": "/opt-rel/tmp/escaped2",
                },
            ]
        },
        tags={"imagebuilder.local.buildUser": "root"} if as_root else None,
    )
    log = RecLog()
    _prepared, env, steps = _run_to_capture(provider, build, log)
    assert [s.status for s in steps] == ["succeeded"] * 3, log.text
    fifo = {"type": "File", "sourceUri": (file_root / "f").as_uri(), "destination": "/fifo"}
    props = build.template["properties"]
    with_fifo = build.template | {"properties": props | {"customize": [*props["customize"], fifo]}}
    blocked = provider.customize(build.model_copy(update={"template": with_fifo}), env, 3, log)
    assert blocked.status == "failed" and blocked.error is not None and "not a file" in blocked.error.message
    root = Path(env.handle["root"])
    assert not (outside / "escaped").exists()
    assert not Path("/tmp/escaped2").exists()
    # Both landed inside the image, where the image's own view of the links points.
    assert (root / str(outside).lstrip("/") / "escaped").read_text() == "payload"
    assert (root / "tmp/escaped2").read_text() == "payload"
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_network_off_by_tag_and_on_by_default(provider: LocalProvider) -> None:
    count = ["grep -c : /proc/net/dev | sudo tee /root/ifaces"]
    off = build_input(
        {"customize": [{"type": "Shell", "inline": count}]},
        name="netoff",
        tags={"imagebuilder.local.network": "off"},
    )
    on = build_input({"customize": [{"type": "Shell", "inline": count}]}, name="neton")
    log = RecLog()
    counts = {}
    for build in (off, on):
        _p, env, steps = _run_to_capture(provider, build, log)
        assert steps[0].status == "succeeded"
        counts[build.run.template_name] = int((Path(env.handle["root"]) / "root/ifaces").read_text())
        provider.cleanup(build, keep=False, log=log)
        assert_no_leaks(provider, build)
    assert counts["netoff"] == 1  # only lo
    # On: a namespace of its own (lo + slirp4netns' tap0), never the host's (its loopback services).
    assert counts["neton"] == 2


def test_step_timeout_kills_the_sandbox(provider: LocalProvider) -> None:
    build = build_input(
        {
            "customize": [
                {"type": "Shell", "name": "hang", "inline": ["sleep 300 &", "echo started", "sleep 300"]}
            ]
        },
        tags={"imagebuilder.local.stepTimeoutMinutes": "0.02"},
    )
    log = RecLog()
    _p, _env, steps = _run_to_capture(provider, build, log)
    assert steps[0].status == "failed" and steps[0].error is not None
    assert steps[0].error.code == "CustomizerTimeout"
    assert "started" in steps[0].error.log_tail
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_step_disk_limit_by_tag_stops_the_step(provider: LocalProvider) -> None:
    """The template tag imagebuilder.local.stepDiskMB limits what one step writes to the build root in
    all (many files, each under the per-file limit); the step fails naming the limit and the setting."""
    build = build_input(
        {
            "customize": [
                {
                    "type": "Shell",
                    "name": "fill",
                    "inline": ["for i in 1 2 3 4; do sudo dd if=/dev/zero of=/var/f$i bs=1M count=8; done"],
                }
            ]
        },
        tags={"imagebuilder.local.stepDiskMB": "16"},
    )
    log = RecLog()
    _p, _env, steps = _run_to_capture(provider, build, log)
    assert steps[0].status == "failed" and steps[0].error is not None
    assert steps[0].error.code == "CustomizerDiskLimit"
    message = steps[0].error.message
    assert "16 MB" in message and "imagebuilder.local.stepDiskMB" in message
    assert "IMAGEBUILDER_STEP_DISK_MB" in message
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_windows_customizers_rejected_for_linux_sources(provider: LocalProvider) -> None:
    build = build_input(
        {
            "customize": [
                {"type": "Shell", "inline": ["true"]},
                {"type": "PowerShell", "inline": ["Write-Host hi"]},
            ]
        }
    )
    res = provider.prepare(build, RecLog())
    assert res.status == "failed" and res.error is not None
    assert res.error.code == "BadCustomizerType"
    assert "properties.customize[1].type" in res.error.message and "PowerShell" in res.error.message
    assert not provider.layout(build).build.exists()


def test_marketplace_image_without_local_base_names_the_available_ones(provider: LocalProvider) -> None:
    build = build_input({})
    template = dict(build.template)
    template["properties"] = {
        "source": {
            "type": "PlatformImage",
            "publisher": "Canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server",
            "version": "latest",
        },
        "distribute": build.template["properties"]["distribute"],
    }
    res = provider.prepare(build.model_copy(update={"template": template}), RecLog())
    assert res.status == "failed" and res.error is not None
    assert "Debian:debian-12:12" in res.error.message
    assert "IMAGEBUILDER_LOCAL_CATALOG" in res.error.message


def test_validation_in_sandbox_does_not_touch_the_image(provider: LocalProvider) -> None:
    build = build_input(
        {
            "customize": [{"type": "Shell", "inline": ["echo v1 | sudo tee /etc/app-version"]}],
            "validate": {
                "inVMValidations": [
                    {
                        "type": "Shell",
                        "name": "check",
                        "inline": ["grep -q v1 /etc/app-version", "sudo touch /validated"],
                    },
                ]
            },
        }
    )
    log = RecLog()
    _p, env, _steps = _run_to_capture(provider, build, log)
    res = provider.validate(build, env, log)
    assert res.status == "succeeded", res.error
    assert res.details["mode"] == "sandbox"
    assert not (Path(env.handle["root"]) / "validated").exists()
    failing = build.template | {
        "properties": build.template["properties"]
        | {
            "validate": {
                "inVMValidations": [{"type": "Shell", "name": "bad", "inline": ["echo nope", "exit 4"]}]
            }
        }
    }
    bad = provider.validate(build.model_copy(update={"template": failing}), env, log)
    assert bad.status == "failed" and bad.error is not None
    assert bad.error.step == "validate[0] (Shell: bad)" and bad.exit_code == 4
    source_only = build.template | {
        "properties": build.template["properties"]
        | {
            "validate": {
                "sourceValidationOnly": True,
                "inVMValidations": [{"type": "Shell", "inline": ["test ! -e /etc/app-version"]}],
            }
        }
    }
    src = provider.validate(build.model_copy(update={"template": source_only}), env, log)
    assert src.status == "succeeded", src.error
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_phases_are_idempotent(provider: LocalProvider) -> None:
    build = build_input(
        {"customize": [{"type": "Shell", "inline": ["echo x | sudo tee -a /counter"]}]},
        tags={"imagebuilder.local.qcow2": "true"},
    )
    log = RecLog()
    first = provider.prepare(build, log)
    assert provider.prepare(build, log) == first
    env = provider.create_build_env(build, first, log)
    assert provider.create_build_env(build, first, log).handle == env.handle
    provider.customize(build, env, 0, log)
    provider.customize(build, env, 0, log)  # a replayed activity does not run the step twice
    assert (Path(env.handle["root"]) / "counter").read_text() == "x\n"
    cap = provider.capture(build, env, log)
    assert provider.capture(build, env, log) == cap
    qcow2 = disk.inspect_disk(Path(cap.image["qcow2"]))
    assert qcow2["format"] == "qcow2" and qcow2["virtual_size"] + 512 == cap.image["size"]
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_cleanup_keep_then_cleanup(provider: LocalProvider) -> None:
    build = build_input({"customize": [{"type": "Shell", "inline": ["exit 1"]}]})
    log = RecLog()
    _p, env, _steps = _run_to_capture(provider, build, log)
    kept = provider.cleanup(build, keep=True, log=log)
    assert any(str(env.handle["root"]) in k for k in kept.kept)
    assert any("logs" in k for k in kept.kept)
    assert (Path(env.handle["root"]) / "bin").exists()
    assert (provider.layout(build).logs / "customization.log").is_file()
    assert mounts_under(provider.state_dir) == []  # kept as a plain folder: no mount outlives the run
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_cleanup_without_a_build_env(provider: LocalProvider) -> None:
    build = build_input({})
    report = provider.cleanup(build, keep=False, log=RecLog())
    assert report.errors == []
    assert_no_leaks(provider, build)


def test_layering_on_a_gallery_version_and_a_managed_image(provider: LocalProvider) -> None:
    log = RecLog()
    golden = build_input(
        {
            "customize": [{"type": "Shell", "inline": ["echo baseline | sudo tee /etc/baseline"]}],
            "distribute": [
                {
                    "type": "SharedImage",
                    "runOutputName": "g",
                    "galleryImageId": GALLERY_IMAGE,
                    "targetRegions": [{"name": "westus"}],
                },
                {
                    "type": "ManagedImage",
                    "runOutputName": "m",
                    "imageId": GALLERY_IMAGE.replace("/galleries/gal1/images/app", "/images/golden"),
                    "location": "westus",
                },
            ],
        },
        name="golden",
    )
    _p, env, _s = _run_to_capture(provider, golden, log)
    provider.generalize(golden, env, log)
    cap = provider.capture(golden, env, log)
    g = provider.distribute(golden, cap, 0, "westus", log)
    m = provider.distribute(golden, cap, 1, "westus", log)
    assert g.status == m.status == "succeeded"
    provider.cleanup(golden, keep=False, log=log)

    for source in (
        {"type": "SharedImageVersion", "imageVersionId": f"{GALLERY_IMAGE}/versions/latest"},
        {"type": "ManagedImage", "imageId": m.artifact_id},
    ):
        dept = build_input(
            {
                "customize": [
                    {
                        "type": "Shell",
                        "inline": [
                            "sudo sh -c 'cat /etc/baseline > /etc/dept'",
                            "echo dept | sudo tee -a /etc/dept",
                        ],
                    }
                ],
                "distribute": [
                    {
                        "type": "SharedImage",
                        "runOutputName": "g",
                        "galleryImageId": GALLERY_IMAGE,
                        "versioning": {"scheme": "Latest"},
                        "targetRegions": [{"name": "westus"}],
                    }
                ],
            },
            name="dept",
            run_id=source["type"],
        )
        dept = dept.model_copy(
            update={
                "template": dept.template | {"properties": dept.template["properties"] | {"source": source}}
            }
        )
        prepared, env2, steps = _run_to_capture(provider, dept, log)
        assert steps[0].status == "succeeded", steps[0].error
        if source["type"] == "SharedImageVersion":
            assert prepared.source is not None and prepared.source.exact_version == "1.0.0"
            assert prepared.source.details["exactVersionId"] == f"{GALLERY_IMAGE}/versions/1.0.0"
        provider.generalize(dept, env2, log)
        cap2: CaptureResult = provider.capture(dept, env2, log)
        assert disk.read_file_from_disk(Path(cap2.image["vhd"]), "/etc/dept") == b"baseline\ndept\n"
        out = provider.distribute(dept, cap2, 0, "westus", log)
        assert out.status == "succeeded"
        provider.cleanup(dept, keep=False, log=log)
        assert_no_leaks(provider, dept)
    versions = sorted(os.listdir(Path(out.artifact_uri.removeprefix("file://")).parent.parent.parent))  # type: ignore[union-attr]
    assert [v for v in versions if v[0].isdigit()] == ["1.0.0", "1.0.1", "1.0.2"]


def test_cleanup_during_a_running_customizer_stops_it(provider: LocalProvider) -> None:
    import threading
    import time

    build = build_input(
        {"customize": [{"type": "Shell", "name": "long", "inline": ["echo begun", "sleep 120"]}]}
    )
    log = RecLog()
    prepared = provider.prepare(build, log)
    env = provider.create_build_env(build, prepared, log)
    results = []
    worker = threading.Thread(target=lambda: results.append(provider.customize(build, env, 0, log)))
    worker.start()
    deadline = time.monotonic() + 20
    while "begun" not in log.text and time.monotonic() < deadline:
        time.sleep(0.05)
    report = provider.cleanup(build, keep=False, log=log)  # what a cancel does
    worker.join(30)
    assert not worker.is_alive()
    assert any(r.startswith("process ") for r in report.removed)
    assert results[0].status == "failed"
    assert_no_leaks(provider, build)


def test_boot_results_become_step_results(tmp_path: Path) -> None:
    from imagebuilder.providers.local import boot
    from imagebuilder.providers.local.validate import _boot_step_result

    checks = [
        boot.CheckResult("validate[0] (Shell: a)", 0, ["fine"]),
        boot.CheckResult("validate[1] (Shell: b)", 3, ["x", "bad"]),
    ]
    failed = boot.BootResult(
        ok=False, exit_code=3, serial_log_path=tmp_path / "s.log", duration=20.5,
        failures=["validation 'validate[1] (Shell: b)' failed with exit code 3"], output_tail=["console"], checks=checks,
    )  # fmt: skip
    log = RecLog()
    res = _boot_step_result(failed, tmp_path / "s.log", log, log)
    assert res.status == "failed" and res.step == "validate[1] (Shell: b)" and res.exit_code == 3
    assert res.error is not None and res.error.log_tail == ["x", "bad"] and res.error.log_uri == log.uri
    assert res.details["checks"][1] == {"name": "validate[1] (Shell: b)", "exit_code": 3}
    timed_out = boot.BootResult(
        ok=False, exit_code=None, serial_log_path=tmp_path / "s.log", duration=240, failures=["timed out"],
        output_tail=["Probing EDD"], checks=[], timed_out=True,
    )  # fmt: skip
    res2 = _boot_step_result(timed_out, None, log, log)
    assert (
        res2.error is not None
        and res2.error.code == "ValidationTimeout"
        and res2.error.log_tail == ["Probing EDD"]
    )
    ok = boot.BootResult(True, 0, tmp_path / "s.log", 19.0, [], [], checks[:1])
    assert _boot_step_result(ok, None, log, log).status == "succeeded"


def test_vhd_and_managed_image_targets_failures_and_uploader(provider: LocalProvider, tmp_path: Path) -> None:
    uploads: list[tuple[str, Path]] = []

    def upload(url: str, path: Path) -> str:
        uploads.append((url, path))
        return url.split("?", 1)[0]

    provider.blob_uploader = None
    inside = provider.state_dir / "vhds" / "custom" / "mine.vhd"
    targets = [
        {"type": "VHD", "runOutputName": "outside", "uri": (tmp_path / "x.vhd").as_uri()},
        {"type": "VHD", "runOutputName": "inside", "uri": inside.as_uri()},
        {
            "type": "VHD",
            "runOutputName": "blob",
            "uri": "https://acct.blob.core.windows.net/vhds/a.vhd?sig=SECRET",
        },
        {
            "type": "ManagedImage",
            "runOutputName": "m1",
            "imageId": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i",
            "location": "westus",
        },
        {
            "type": "ManagedImage",
            "runOutputName": "m2",
            "imageId": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i",
            "location": "eastus",
        },
    ]
    log = RecLog()
    # a target type the template model does not know: the stored template cannot be read, prepare says where
    bad = provider.prepare(
        build_input({"distribute": [*targets, {"type": "Nope", "runOutputName": "n"}]}), log
    )
    assert bad.status == "failed" and bad.error is not None and bad.error.code == "BadDistributeType"
    assert "properties.distribute[5].type" in bad.error.message
    build = build_input({"distribute": targets})
    prepared = provider.prepare(build, log)
    env = provider.create_build_env(build, prepared, log)
    cap = provider.capture(build, env, log)
    outside = provider.distribute(build, cap, 0, "westus", log)
    assert (
        outside.status == "failed" and outside.error is not None and outside.error.code == "BadVhdDistribute"
    )
    assert not (tmp_path / "x.vhd").exists()
    ok = provider.distribute(build, cap, 1, "westus", log)
    assert ok.status == "succeeded" and inside.is_file() and ok.artifact_uri == inside.as_uri()
    blob = provider.distribute(build, cap, 2, "westus", log)
    assert blob.status == "failed" and blob.error is not None and "SECRET" not in blob.error.message
    provider.blob_uploader = upload
    blob2 = provider.distribute(build, cap, 2, "westus", log)
    assert (
        blob2.status == "succeeded" and blob2.artifact_uri == "https://acct.blob.core.windows.net/vhds/a.vhd"
    )
    assert uploads and uploads[0][1] == Path(cap.image["vhd"])
    assert provider.distribute(build, cap, 3, "westus", log).status == "succeeded"
    conflict = provider.distribute(build, cap, 4, "eastus", log)
    assert conflict.status == "failed" and conflict.error is not None and "westus" in conflict.error.message
    assert conflict.error.step == "distribute[4] (ManagedImage: m2) eastus"
    assert "SECRET" not in log.text
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)


def test_concurrent_runs_share_the_base_and_get_distinct_versions(tmp_path: Path, base_cache: Path) -> None:
    import threading

    provider = LocalProvider(state_dir=tmp_path / "state", cache_dir=tmp_path / "fresh-cache")
    builds = [
        build_input(
            {
                "customize": [{"type": "Shell", "inline": [f"echo {i} | sudo tee /n"]}],
                "distribute": [
                    {
                        "type": "SharedImage",
                        "runOutputName": "g",
                        "galleryImageId": GALLERY_IMAGE,
                        "targetRegions": [{"name": "a"}, {"name": "b"}],
                    }
                ],
            },
            run_id=f"r{i}",
        )
        for i in range(3)
    ]
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(build) -> None:  # type: ignore[no-untyped-def]
        try:
            log = RecLog()
            env = provider.create_build_env(build, provider.prepare(build, log), log)
            provider.customize(build, env, 0, log)
            cap = provider.capture(build, env, log)
            out: list = []
            regions = [
                threading.Thread(target=lambda r=r: out.append(provider.distribute(build, cap, 0, r, log)))
                for r in "ab"
            ]
            for t in regions:
                t.start()
            for t in regions:
                t.join()
            results[build.run.run_id] = out
            provider.cleanup(build, keep=False, log=log)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in builds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    versions = set()
    for out in results.values():
        assert [r.status for r in out] == ["succeeded", "succeeded"]
        ids = {r.artifact_id for r in out}
        assert len(ids) == 1  # both regions of one run publish the same version
        versions |= ids
    assert len(versions) == 3
    assert [
        p.name for p in (tmp_path / "fresh-cache" / "extracted").iterdir() if not p.name.startswith(".")
    ].__len__() == 1
    for b in builds:
        assert_no_leaks(provider, b)


def test_a_lost_overlay_mount_is_restored(provider: LocalProvider) -> None:
    import subprocess

    build = build_input(
        {
            "customize": [
                {"type": "Shell", "inline": ["echo one | sudo tee /one"]},
                {"type": "Shell", "inline": ["sudo sh -c 'cat /one > /two'"]},
            ]
        }
    )
    log = RecLog()
    env = provider.create_build_env(build, provider.prepare(build, log), log)
    assert provider.customize(build, env, 0, log).status == "succeeded"
    root = Path(env.handle["root"])
    assert env.handle["mode"] == "overlay"
    subprocess.run(["umount", str(root)], check=True)  # what a host reboot does
    assert not (root / "one").exists()
    assert provider.customize(build, env, 1, log).status == "succeeded"
    assert (root / "two").read_text() == "one\n"
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)
