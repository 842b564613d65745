"""The scripts the Azure provider sends into the build VM through managed Run Command (pure text, no I/O).

Each function returns the whole script for one step. Downloads always verify a SHA-256 inside the VM
(the provider checked the same digest before the build VM existed), so a file changed in between fails.
Machine-readable results come back as one line `IMAGEBUILDER-<KIND> key=value ...` in the output.
"""

from __future__ import annotations

import base64
import re
import shlex

from imagebuilder.template.models import (
    FileCustomizer,
    FileValidator,
    PowerShellCustomizer,
    PowerShellValidator,
    ShellCustomizer,
    ShellValidator,
    WindowsUpdateCustomizer,
)

MARKER_WU = "IMAGEBUILDER-WU"
MARKER_BOOT = "IMAGEBUILDER-BOOT"

DEFAULT_RESTART_COMMAND = 'shutdown /r /f /t 0 /c "packer restart"'
DEFAULT_WU_SEARCH = "BrowseOnly=0 and IsInstalled=0"
DEFAULT_WU_FILTERS = ["exclude:$_.Title -like '*Preview*'", "include:$true"]
DEFAULT_WU_LIMIT = 1000


def _ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ps_b64(text: str) -> str:
    """A PowerShell expression evaluating to `text`, immune to quoting (the text travels base64-encoded)."""
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f"[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{encoded}'))"


# -- Linux ------------------------------------------------------------------------------------------

_BASH_DOWNLOAD = r"""
ib_download() {  # url dest sha256; private Azure blobs (no SAS) are read with the VM's managed identity
  local url="$1" dest="$2" want="$3" tmp token
  local -a auth=()
  case "$url" in
    https://*.blob.core.windows.net/*)
      case "$url" in
        *sig=*) ;;
        *)
          local imds="http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
          imds="$imds&resource=https%3A%2F%2Fstorage.azure.com%2F${IB_MSI:+&msi_res_id=$IB_MSI}"
          token="$(curl -fsS -H Metadata:true "$imds" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
          auth=(-H "Authorization: Bearer $token" -H "x-ms-version: 2021-08-06")
          ;;
      esac
      ;;
  esac
  tmp="$(mktemp)"
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 5 --retry-delay 3 "${auth[@]}" -o "$tmp" "$url"
  else
    wget -q -O "$tmp" "$url"
  fi
  local got
  got="$(sha256sum "$tmp" | cut -d' ' -f1)"
  if [ "$got" != "$want" ]; then
    echo "checksum mismatch for the file downloaded to $dest: expected $want, got $got" >&2
    rm -f "$tmp"
    exit 97
  fi
  mv -f "$tmp" "$dest"
}
"""


def _bash_header(identity: str | None) -> str:
    return "#!/bin/bash\nset -eu\n" + f"IB_MSI={shlex.quote(identity or '')}\n" + _BASH_DOWNLOAD


def shell(step: ShellCustomizer | ShellValidator, sha256: str | None, identity: str | None = None) -> str:
    """A Shell customizer/validator: inline lines run by `/bin/sh -e` (like Packer), or scriptUri
    downloaded, verified and run by bash. The user's text travels base64-encoded, immune to quoting."""
    if step.script_uri:
        url = step.script_uri
        return (
            _bash_header(identity)
            + 'script="$(mktemp)"\n'
            + f'ib_download {shlex.quote(url)} "$script" {shlex.quote(sha256 or "")}\n'
            + 'set +e\n/bin/bash "$script"\nrc=$?\nrm -f "$script"\nexit $rc\n'
        )
    body = "\n".join(step.inline or []) + "\n"
    encoded = base64.b64encode(body.encode("utf-8")).decode("ascii")
    return (
        "#!/bin/bash\nset -eu\n"
        + 'script="$(mktemp)"\n'
        + f'echo {encoded} | base64 -d > "$script"\n'
        + 'set +e\n/bin/sh -e "$script"\nrc=$?\nrm -f "$script"\nexit $rc\n'
    )


def file_linux(step: FileCustomizer | FileValidator, sha256: str, identity: str | None = None) -> str:
    """A File customizer on Linux: download inside the VM, verify, move into `destination`."""
    dest = str(step.destination)
    return (
        "#!/bin/bash\nset -eu\n"
        + _BASH_DOWNLOAD
        + f'mkdir -p "$(dirname {shlex.quote(dest)})"\n'
        + f"ib_download {shlex.quote(str(step.source_uri))} {shlex.quote(dest)} {shlex.quote(sha256)}\n"
        + f"echo 'copied to {dest}'\n"
    )


# AIB's documented default Linux deprovisioning command, and the file a customizer may leave to replace it.
AIB_LINUX_DEPROVISION = "/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync"
LINUX_OVERRIDE = "/tmp/DeprovisioningScript.sh"  # noqa: S108 (a path in the build VM, AIB's name)
GENERALIZE_STARTED = "IMAGEBUILDER-GENERALIZE started=1"


def deprovision_linux() -> str:
    """Linux generalization, started detached: `waagent -deprovision+user` stops the guest agent that runs
    and reports Run Command, so a run command that waited for it would never finish (WALinuxAgent#3547).

    The run command only writes the payload and hands it to systemd (`systemd-run`, outside the Run
    Command handler's cgroup; `setsid nohup` where systemd is absent) and reports at once. The payload waits
    a few seconds (the report goes out), runs `/tmp/DeprovisioningScript.sh` when a customizer left one
    (AIB's override) or AIB's default command, then powers the VM off: the provider waits for the stopped
    power state, deallocates and generalizes."""
    payload = (
        "#!/bin/bash\n"
        "sleep 10\n"
        f"if [ -f {LINUX_OVERRIDE} ]; then\n"
        f"  /bin/bash {LINUX_OVERRIDE}\n"
        "else\n"
        f"  {AIB_LINUX_DEPROVISION}\n"
        "fi\n"
        "rc=$?\n"
        'rm -f "$0"\n'
        # A failed deprovision leaves the VM running: the provider's power-state wait then fails the
        # build instead of capturing an image that still holds the build user and host keys.
        'if [ "$rc" -ne 0 ]; then echo "deprovisioning exited with $rc" >&2; exit "$rc"; fi\n'
        "systemctl poweroff || shutdown -h now || poweroff -f\n"
    )
    encoded = base64.b64encode(payload.encode("utf-8")).decode("ascii")
    return (
        "#!/bin/bash\nset -eu\n"
        "payload=/var/tmp/imagebuilder-deprovision.sh\n"
        f'echo {encoded} | base64 -d > "$payload"\n'
        'chmod 700 "$payload"\n'
        "if command -v systemd-run >/dev/null 2>&1; then\n"
        '  systemd-run --unit=imagebuilder-deprovision --no-block --collect /bin/bash "$payload"\n'
        "else\n"
        '  setsid nohup /bin/bash "$payload" >/dev/null 2>&1 < /dev/null &\n'
        "fi\n"
        f"echo '{GENERALIZE_STARTED}'\n"
    )


INVENTORY_BEGIN = "IMAGEBUILDER-INVENTORY begin=1"
INVENTORY_END = "IMAGEBUILDER-INVENTORY end=1"

# One tab-separated record per line: `O <os-release line>`, `P <package> <version> <arch> <Source field>
# <maintainer> <homepage> <status>`, `L <package> <License short name>`. The awk program reads a DEP-5
# copyright file as `providers/local/sbom.py` does: only when its first paragraph's Format names
# copyright-format, the first line of `License:` of each paragraph that also has `Files:`.
_DEP5_AWK = r"""BEGIN { RS = ""; FS = "\n" }
NR == 1 { ok = 0
          for (i = 1; i <= NF; i++) if (tolower($i) ~ /^format[ \t]*:/ && $i ~ /copyright-format/) ok = 1
          if (!ok) exit }
{ files = 0; lic = ""
  for (i = 1; i <= NF; i++) {
    l = $i; if (l ~ /^[ \t]/ || l ~ /^#/) continue
    low = tolower(l)
    if (low ~ /^files[ \t]*:/) files = 1
    else if (low ~ /^license[ \t]*:/) { sub(/^[^:]*:[ \t]*/, "", l); sub(/[ \t\r]+$/, "", l); lic = l }
  }
  if (files && lic != "" && !(lic in seen)) { seen[lic] = 1; print "L\t" P "\t" lic } }"""


def inventory_linux() -> str:
    """Read-only: what the image holds, read before generalize (the SBOM's inventory): os-release, the
    dpkg database through dpkg-query (name, version, architecture, Source, maintainer, homepage, status)
    and the License fields of machine-readable copyright files. Prints nothing else between the markers."""
    fmt = r"P\t${Package}\t${Version}\t${Architecture}\t${Source}\t${Maintainer}\t${Homepage}\t${Status}\n"
    return (
        "#!/bin/bash\nset -u\nexport LC_ALL=C\n"
        f"echo '{INVENTORY_BEGIN}'\n"
        "for f in /etc/os-release /usr/lib/os-release; do\n"
        '  if [ -r "$f" ]; then awk \'{ print "O\\t" $0 }\' "$f"; break; fi\n'
        "done\n"
        "if command -v dpkg-query >/dev/null 2>&1; then\n"
        f"  dpkg-query -W -f={shlex.quote(fmt)} || exit 3\n"
        "  dpkg-query -W -f='${Package}\\t${Status}\\n' | awk -F'\\t' '$2 ~ / installed$/ { print $1 }' \\\n"
        "    | sort -u | while IFS= read -r p; do\n"
        '      c="/usr/share/doc/$p/copyright"\n'
        '      [ -f "$c" ] || continue\n'
        # the first MiB, as the local provider reads it (bigger copyright files are rare: boost's)
        "      head -c 1048576 \"$c\" | sed 's/^[[:space:]]*$//' \\\n"
        f'        | awk -v P="$p" {shlex.quote(_DEP5_AWK)}\n'
        "    done\n"
        "fi\n"
        f"echo '{INVENTORY_END}'\n"
    )


def inventory_windows() -> str:
    """Read-only: the machine-wide installed programs (the Uninstall keys of HKLM, 64- and 32-bit views;
    Run Command runs as SYSTEM, so a program installed for one user only is not listed) and the hotfixes
    (Get-HotFix), as `W`/`H` records between the markers, with the OS name and version as `O` records."""
    return (
        "$ErrorActionPreference = 'Stop'\n"
        f"Write-Output '{INVENTORY_BEGIN}'\n"
        "$os = Get-CimInstance Win32_OperatingSystem\n"
        'Write-Output ("O`tID=windows")\n'
        'Write-Output ("O`tVERSION_ID=" + $os.Version)\n'
        'Write-Output ("O`tPRETTY_NAME=" + $os.Caption)\n'
        "$keys = 'HKLM:\\Software\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\*',\n"
        "  'HKLM:\\Software\\WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\*'\n"
        "foreach ($k in $keys) {\n"
        "  Get-ItemProperty -Path $k -ErrorAction SilentlyContinue | Where-Object { $_.DisplayName } |\n"
        "    ForEach-Object {\n"
        "      $arch = if ($k -like '*WOW6432Node*') { 'x86' } else { '' }\n"
        "      $f = @($_.DisplayName, $_.DisplayVersion, $arch, $_.Publisher, $_.URLInfoAbout) |\n"
        '        ForEach-Object { ("$_" -replace "[`t`r`n]", \' \').Trim() }\n'
        '      Write-Output ("W`t" + ($f -join "`t"))\n'
        "    }\n"
        "}\n"
        'Get-HotFix | ForEach-Object { Write-Output ("H`t" + $_.HotFixID + "`t" + $_.Description) }\n'
        f"Write-Output '{INVENTORY_END}'\n"
    )


# -- Windows ----------------------------------------------------------------------------------------

_PS_DOWNLOAD = r"""
function Invoke-IbDownload([string]$Url, [string]$Dest, [string]$Sha256) {
  $ProgressPreference = 'SilentlyContinue'
  $headers = @{}
  if ($Url -match '^https://[^/]+\.blob\.core\.windows\.net/' -and $Url -notmatch 'sig=') {
    $imds = 'http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com%2F'
    if ($IbMsi) { $imds += "&msi_res_id=$IbMsi" }
    $token = (Invoke-RestMethod -Headers @{ Metadata = 'true' } -Uri $imds).access_token
    $headers = @{ Authorization = "Bearer $token"; 'x-ms-version' = '2021-08-06' }
  }
  $tmp = [IO.Path]::GetTempFileName()
  Invoke-WebRequest -UseBasicParsing -Headers $headers -Uri $Url -OutFile $tmp
  $got = (Get-FileHash -Algorithm SHA256 -Path $tmp).Hash.ToLowerInvariant()
  if ($got -ne $Sha256.ToLowerInvariant()) {
    Remove-Item -Force $tmp
    Write-Error "checksum mismatch for the file downloaded to ${Dest}: expected $Sha256, got $got"
    exit 97
  }
  Move-Item -Force $tmp $Dest
}
"""

# runElevated false (AIB's default) and runElevated without runAsSystem: AIB runs these as the build VM's
# admin user (Packer's WinRM session, an administrator's full token; the elevated one through a scheduled
# task). Run Command itself runs as SYSTEM, so the script runs through a one-shot scheduled task as that
# admin user, with an S4U logon (no password needed or stored) and the highest run level, so installers
# that work on AIB get no access denied here.
_PS_AS_USER = r"""
function Invoke-IbAsUser([string]$ScriptPath, [string]$User) {
  $out = "$env:SystemRoot\Temp\imagebuilder-task.log"
  $arg = "-NoProfile -ExecutionPolicy Bypass -Command `"& '$ScriptPath' *> '$out'; exit `$LASTEXITCODE`""
  $action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arg
  $principal = New-ScheduledTaskPrincipal -UserId $User -LogonType S4U -RunLevel Highest
  $task = 'imagebuilder-step'
  Register-ScheduledTask -TaskName $task -Action $action -Principal $principal -Force | Out-Null
  Start-ScheduledTask -TaskName $task
  do {
    Start-Sleep -Seconds 2; $t = Get-ScheduledTask -TaskName $task
  } while ($t.State -eq 'Running' -or $t.State -eq 'Queued')
  $rc = (Get-ScheduledTaskInfo -TaskName $task).LastTaskResult
  Unregister-ScheduledTask -TaskName $task -Confirm:$false
  if (Test-Path $out) { Get-Content $out; Remove-Item -Force $out }
  return $rc
}
"""


def powershell(
    step: PowerShellCustomizer | PowerShellValidator,
    sha256: str | None,
    identity: str | None = None,
    admin_user: str = "packer",
) -> str:
    """A PowerShell customizer/validator: runElevated + runAsSystem runs as SYSTEM (Run Command's own
    account); otherwise as the build VM's admin user `admin_user`, as AIB does. The exit code comes back."""
    lines = [
        "$ErrorActionPreference = 'Stop'",
        f"$IbMsi = {_ps_quote(identity or '')}",
        _PS_DOWNLOAD,
        _PS_AS_USER,
    ]
    lines.append("$script = Join-Path $env:TEMP 'imagebuilder-script.ps1'")
    if step.script_uri:
        lines.append(f"Invoke-IbDownload {_ps_quote(step.script_uri)} $script {_ps_quote(sha256 or '')}")
    else:
        body = "\n".join(step.inline or [])
        lines.append(f"Set-Content -Encoding UTF8 -Path $script -Value ({_ps_b64(body)})")
    lines.append("$ErrorActionPreference = 'Continue'")
    if step.run_elevated and step.run_as_system:
        lines.append("& powershell.exe -NoProfile -ExecutionPolicy Bypass -File $script\n$rc = $LASTEXITCODE")
    else:
        lines.append(f"$rc = Invoke-IbAsUser $script {_ps_quote(admin_user)}")
    lines.append("Remove-Item -Force $script -ErrorAction SilentlyContinue\nexit $rc")
    return "\n".join(lines) + "\n"


def file_windows(step: FileCustomizer | FileValidator, sha256: str, identity: str | None = None) -> str:
    """A File customizer on Windows."""
    dest = str(step.destination)
    return (
        "$ErrorActionPreference = 'Stop'\n"
        + f"$IbMsi = {_ps_quote(identity or '')}\n"
        + _PS_DOWNLOAD
        + f"New-Item -ItemType Directory -Force -Path (Split-Path -Parent {_ps_quote(dest)}) | Out-Null\n"
        + f"Invoke-IbDownload {_ps_quote(str(step.source_uri))} {_ps_quote(dest)} {_ps_quote(sha256)}\n"
        + f"Write-Output 'copied to {dest}'\n"
    )


def schedule_restart(command: str, delay_seconds: int = 10) -> str:
    """Start `command` detached after a delay, so the run command reports before the VM goes down."""
    return (
        "$ErrorActionPreference = 'Stop'\n"
        f"$cmd = {_ps_b64(command)}\n"
        f"Start-Process -WindowStyle Hidden -FilePath cmd.exe -ArgumentList '/c', "
        f'"timeout /t {delay_seconds} /nobreak > NUL & $cmd"\n'
        "Write-Output 'restart scheduled'\n"
    )


def restart_check(check_command: str | None) -> str:
    """Print the last boot time (epoch seconds) and run the user's restartCheckCommand, if any."""
    lines = [
        "$boot = (Get-CimInstance Win32_OperatingSystem).LastBootUpTime.ToUniversalTime()",
        "$epoch = [int][double]::Parse((Get-Date $boot -UFormat %s))",
        f'Write-Output "{MARKER_BOOT} epoch=$epoch"',
    ]
    if check_command:
        lines.append(f"cmd.exe /c ({_ps_b64(check_command)})\nexit $LASTEXITCODE")
    return "\n".join(lines) + "\n"


def windows_update(step: WindowsUpdateCustomizer) -> str:
    """Search, filter, download and install updates with the Windows Update Agent API (one pass).

    The last line says how many were installed, how many are still pending, and whether a reboot is
    needed; the provider repeats passes (rebooting in between) until nothing is pending.
    """
    criteria = step.search_criteria or DEFAULT_WU_SEARCH
    filters = list(step.filters or DEFAULT_WU_FILTERS)
    limit = step.update_limit or DEFAULT_WU_LIMIT
    filter_lines = []
    for item in filters:
        kind, _, expr = item.partition(":")
        if kind not in ("include", "exclude") or not expr:
            raise ValueError(
                f"Windows Update filter {item!r} must look like 'include:<expr>' or 'exclude:<expr>'"
            )
        filter_lines.append(f"  @{{ Kind = '{kind}'; Test = [scriptblock]::Create({_ps_b64(expr)}) }}")
    return (
        "$ErrorActionPreference = 'Stop'\n"
        "$session = New-Object -ComObject Microsoft.Update.Session\n"
        "$searcher = $session.CreateUpdateSearcher()\n"
        f"$result = $searcher.Search({_ps_b64(criteria)})\n"
        "$filters = @(\n" + ",\n".join(filter_lines) + "\n)\n"
        "$selected = New-Object -ComObject Microsoft.Update.UpdateColl\n"
        "$matched = 0\n"
        "foreach ($u in $result.Updates) {\n"
        "  $_ = $u; $verdict = $null\n"
        "  foreach ($f in $filters) { if ($verdict -eq $null -and (& $f.Test)) { $verdict = $f.Kind } }\n"
        "  if ($verdict -ne 'include') { Write-Output \"skipped: $($u.Title)\"; continue }\n"
        "  $matched++\n"
        f"  if ($selected.Count -lt {limit}) {{ if (-not $u.EulaAccepted) {{ $u.AcceptEula() }}; "
        "[void]$selected.Add($u) }\n"
        "}\n"
        "$installed = 0; $reboot = 0\n"
        "if ($selected.Count -gt 0) {\n"
        "  $dl = $session.CreateUpdateDownloader(); $dl.Updates = $selected; [void]$dl.Download()\n"
        "  $inst = $session.CreateUpdateInstaller(); $inst.Updates = $selected\n"
        "  $r = $inst.Install()\n"
        "  for ($i = 0; $i -lt $selected.Count; $i++) {\n"
        "    $code = $r.GetUpdateResult($i).ResultCode\n"
        '    Write-Output "installed ($code): $($selected.Item($i).Title)"\n'
        "    if ($code -eq 2 -or $code -eq 3) { $installed++ }\n"
        "  }\n"
        "  if ($r.RebootRequired) { $reboot = 1 }\n"
        "}\n"
        "$remaining = $matched - $installed\n"
        f'Write-Output "{MARKER_WU} installed=$installed remaining=$remaining reboot=$reboot"\n'
    )


WINDOWS_OVERRIDE = r"C:\DeprovisioningScript.ps1"

# AIB's documented default Windows generalization (Sysprep with /mode:vm after the guest agent services
# run, the unattend.xml files removed first, then waiting for the reseal state).
AIB_SYSPREP = r"""
Write-Output '>>> Waiting for GA Service (RdAgent) to start ...'
while ((Get-Service RdAgent).Status -ne 'Running') { Start-Sleep -s 5 }
Write-Output '>>> Waiting for GA Service (WindowsAzureTelemetryService) to start ...'
$telemetry = Get-Service WindowsAzureTelemetryService -ErrorAction SilentlyContinue
while ($telemetry -and ((Get-Service WindowsAzureTelemetryService).Status -ne 'Running')) { Start-Sleep -s 5 }
Write-Output '>>> Waiting for GA Service (WindowsAzureGuestAgent) to start ...'
while ((Get-Service WindowsAzureGuestAgent).Status -ne 'Running') { Start-Sleep -s 5 }
if (Test-Path $Env:SystemRoot\system32\Sysprep\unattend.xml) {
  Write-Output '>>> Removing Sysprep\unattend.xml ...'
  Remove-Item $Env:SystemRoot\system32\Sysprep\unattend.xml -Force
}
if (Test-Path $Env:SystemRoot\Panther\unattend.xml) {
  Write-Output '>>> Removing Panther\unattend.xml ...'
  Remove-Item $Env:SystemRoot\Panther\unattend.xml -Force
}
Write-Output '>>> Sysprepping VM ...'
& $Env:SystemRoot\System32\Sysprep\Sysprep.exe /oobe /generalize /quiet /quit /mode:vm
while ($true) {
  $imageState = (Get-ItemProperty HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State).ImageState
  Write-Output $imageState
  if ($imageState -eq 'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE') { break }
  Start-Sleep -s 5
}
Write-Output '>>> Sysprep complete ...'
"""


def sysprep() -> str:
    """Windows generalization, started detached as a SYSTEM scheduled task (Sysprep stops the guest agent
    that reports Run Command): `C:\\DeprovisioningScript.ps1` when a customizer left one (AIB's override),
    else AIB's default Sysprep; then the VM shuts down and the provider waits for the stopped power state."""
    payload = (
        "$ErrorActionPreference = 'Continue'\n"
        "Start-Sleep -Seconds 10\n"
        f"if (Test-Path '{WINDOWS_OVERRIDE}') {{ & '{WINDOWS_OVERRIDE}'; if (-not $?) {{ exit 1 }} }}"
        " else {\n" + AIB_SYSPREP + "}\nStop-Computer -Force\n"
    )
    return (
        "$ErrorActionPreference = 'Stop'\n"
        "$payload = Join-Path $env:SystemRoot 'Temp\\imagebuilder-generalize.ps1'\n"
        f"Set-Content -Encoding UTF8 -Path $payload -Value ({_ps_b64(payload)})\n"
        '$arg = "-NoProfile -ExecutionPolicy Bypass -File `"$payload`""\n'
        "$action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arg\n"
        "Register-ScheduledTask -TaskName 'imagebuilder-generalize' -Action $action -User 'SYSTEM' "
        "-RunLevel Highest -Force | Out-Null\n"
        "Start-ScheduledTask -TaskName 'imagebuilder-generalize'\n"
        f"Write-Output '{GENERALIZE_STARTED}'\n"
    )


_MARKER_LINE = re.compile(r"^(IMAGEBUILDER-[A-Z]+)\s+(.*)$", re.MULTILINE)


def parse_marker(output: str, marker: str) -> dict[str, str] | None:
    """The key=value pairs of the last `marker` line in a script's output, or None."""
    found: dict[str, str] | None = None
    for match in _MARKER_LINE.finditer(output):
        if match.group(1) == marker:
            found = dict(pair.split("=", 1) for pair in match.group(2).split() if "=" in pair)
    return found


def parse_duration(text: str | None, default_seconds: int) -> int:
    """AIB durations such as '5m', '2h', '90s' (restartTimeout) in seconds."""
    if not text:
        return default_seconds
    match = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"duration {text!r} is not like '5m', '2h' or '90s'")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
