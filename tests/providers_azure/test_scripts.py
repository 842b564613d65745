"""The in-VM scripts: the Linux ones run here for real under bash (download, checksum, exit codes)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from imagebuilder.providers.azure import scripts
from imagebuilder.template.models import (
    STORED,
    FileCustomizer,
    PowerShellCustomizer,
    ShellCustomizer,
    WindowsUpdateCustomizer,
)


def _step(model, kind: str, data: dict):  # the typed step, as a stored template gives it (file:// too)
    return model.model_validate({"type": kind, **data}, context={STORED: True})


def _shell(data: dict) -> ShellCustomizer:
    return _step(ShellCustomizer, "Shell", data)


def _file_linux(data: dict) -> FileCustomizer:
    return _step(FileCustomizer, "File", data)


def _powershell(data: dict) -> PowerShellCustomizer:
    return _step(PowerShellCustomizer, "PowerShell", data)


def _windows_update(data: dict) -> WindowsUpdateCustomizer:
    return _step(WindowsUpdateCustomizer, "WindowsUpdate", data)


def _bash(script: str, tmp_path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "step.sh"
    path.write_text(script)
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=60)


def test_inline_shell_runs_with_sh_e_and_passes_the_exit_code(tmp_path):
    ok = _bash(scripts.shell(_shell({"inline": ["echo one", "echo two"]}), None), tmp_path)
    assert ok.returncode == 0 and ok.stdout == "one\ntwo\n"
    failing = _bash(scripts.shell(_shell({"inline": ["echo before", "false", "echo never"]}), None), tmp_path)
    assert failing.returncode == 1 and "never" not in failing.stdout  # /bin/sh -e like Packer
    quoted = _bash(
        scripts.shell(_shell({"inline": ["echo 'EOF' \"it's\" `echo ticks`", "true", "EOF=1"]}), None),
        tmp_path,
    )
    assert quoted.returncode == 0 and quoted.stdout == "EOF it's ticks\n"  # the text reached sh unchanged


def test_script_and_file_downloads_verify_sha256_inside_the_vm(tmp_path):
    source = tmp_path / "setup.sh"
    source.write_text("echo from-script\nexit 4\n")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    url = source.as_uri()
    run = _bash(scripts.shell(_shell({"scriptUri": url}), digest), tmp_path)
    assert run.returncode == 4 and "from-script" in run.stdout
    bad = _bash(scripts.shell(_shell({"scriptUri": url}), "0" * 64), tmp_path)
    assert bad.returncode == 97 and "checksum mismatch" in bad.stderr

    dest = tmp_path / "etc" / "motd"
    copied = _bash(
        scripts.file_linux(_file_linux({"sourceUri": url, "destination": str(dest)}), digest), tmp_path
    )
    assert copied.returncode == 0 and dest.read_bytes() == source.read_bytes()
    dest.unlink()
    refused = _bash(
        scripts.file_linux(_file_linux({"sourceUri": url, "destination": str(dest)}), "f" * 64), tmp_path
    )
    assert refused.returncode == 97 and not dest.exists()


def test_markers_durations_and_filters():
    out = "x\nIMAGEBUILDER-WU installed=1 remaining=4 reboot=0\nIMAGEBUILDER-WU installed=2 remaining=0 reboot=1\n"
    assert scripts.parse_marker(out, scripts.MARKER_WU) == {"installed": "2", "remaining": "0", "reboot": "1"}
    assert scripts.parse_marker("nothing", scripts.MARKER_WU) is None
    assert scripts.parse_duration("5m", 1) == 300 and scripts.parse_duration("2h", 1) == 7200
    assert scripts.parse_duration(None, 42) == 42
    with pytest.raises(ValueError, match="'5 minutes'"):
        scripts.parse_duration("5 minutes", 1)
    with pytest.raises(ValueError, match="include:<expr>"):
        scripts.windows_update(_windows_update({"filters": ["$_.BrowseOnly"]}))
    default = scripts.windows_update(_windows_update({}))
    assert "$selected.Count -lt 1000" in default


def test_powershell_inline_travels_base64_so_quotes_survive():
    text = "Write-Output 'it''s \"quoted\"'"
    script = scripts.powershell(_powershell({"inline": [text]}), None)
    assert text not in script  # encoded, not spliced into PowerShell source
    import base64
    import re

    encoded = re.search(r"FromBase64String\('([^']+)'\)", script).group(1)
    assert base64.b64decode(encoded).decode() == text


def test_non_elevated_powershell_runs_as_the_vms_admin_user_as_on_aib():
    """AIB runs runElevated: false (its default) as the build VM's admin user; before the fix a brand-new
    non-admin account ran it (New-LocalUser, RunLevel Limited) and installers got access denied."""
    for step in (
        _powershell({"type": "PowerShell", "inline": ["msiexec /i app.msi /qn"]}),
        _powershell({"type": "PowerShell", "inline": ["x"], "runElevated": True}),
    ):
        script = scripts.powershell(step, None, None, "packer")
        assert "$rc = Invoke-IbAsUser $script 'packer'" in script
        assert "-LogonType S4U -RunLevel Highest" in script
        assert "New-LocalUser" not in script and "Limited" not in script and "-Password" not in script
    system = scripts.powershell(
        _powershell({"inline": ["x"], "runElevated": True, "runAsSystem": True}), None
    )
    assert "$rc = Invoke-IbAsUser" not in system


def _fake_bin(bin_dir, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_linux_deprovision_launches_detached_then_deprovisions_and_powers_off(tmp_path):
    """Run for real with fake systemd-run, waagent, systemctl on PATH: the run command's script returns at
    once (the agent reports), and the payload it hands to systemd runs AIB's command, then powers off;
    with /tmp/DeprovisioningScript.sh present the user's script runs instead; a failed deprovisioning
    does not power off (the provider's power-state wait then fails the build)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    _fake_bin(bin_dir, "systemd-run", f'echo "systemd-run $*" >> {calls}\n')
    _fake_bin(bin_dir, "waagent", f'echo "waagent $*" >> {calls}\nexit "${{WAAGENT_RC:-0}}"\n')
    _fake_bin(bin_dir, "systemctl", f'echo "systemctl $*" >> {calls}\n')
    _fake_bin(bin_dir, "sleep", "true\n")
    payload = tmp_path / "payload.sh"
    override = tmp_path / "DeprovisioningScript.sh"
    launcher = (
        scripts.deprovision_linux()
        .replace("/var/tmp/imagebuilder-deprovision.sh", str(payload))
        .replace(scripts.LINUX_OVERRIDE, str(override))
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    launched = subprocess.run(["bash", "-c", launcher], capture_output=True, text=True, timeout=30, env=env)
    assert launched.returncode == 0 and scripts.GENERALIZE_STARTED in launched.stdout
    assert (
        calls.read_text()
        == f"systemd-run --unit=imagebuilder-deprovision --no-block --collect /bin/bash {payload}\n"
    )
    text = (
        payload.read_text()
        .replace("/usr/sbin/waagent", "waagent")
        .replace(scripts.LINUX_OVERRIDE, str(override))
    )

    def run_payload(**extra: str) -> list[str]:
        calls.write_text("")
        payload.write_text(text)
        subprocess.run(
            ["bash", str(payload)], capture_output=True, text=True, timeout=30, env={**env, **extra}
        )
        return calls.read_text().splitlines()

    assert run_payload() == ["waagent -force -deprovision+user", "systemctl poweroff"]
    assert run_payload(WAAGENT_RC="3") == ["waagent -force -deprovision+user"]  # no power-off
    override.write_text(f'echo "user override" >> {calls}\n')
    assert run_payload() == ["user override", "systemctl poweroff"]
