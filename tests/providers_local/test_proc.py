"""The subprocess choke point: argv logging, output streaming, failure tails, timeouts kill the group."""

from __future__ import annotations

import os
import time

import pytest

from imagebuilder.providers.local import proc


class ListLog:
    uri = "mem://log"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def test_run_logs_exact_argv_and_streams_output() -> None:
    log = ListLog()
    done = proc.run(["sh", "-c", 'echo "a b"; echo err >&2', "x y"], log=log)
    assert done.returncode == 0
    assert done.stdout == "a b\n"
    assert done.stderr == "err\n"
    assert log.lines[0] == "$ sh -c 'echo \"a b\"; echo err >&2' 'x y'\n"
    assert "a b\n" in log.lines and "err\n" in log.lines


def test_failure_names_command_exit_code_and_tail() -> None:
    with pytest.raises(proc.CommandError) as info:
        proc.run(["sh", "-c", "for i in $(seq 1 40); do echo line$i; done; exit 7"])
    err = info.value
    assert err.returncode == 7
    assert err.tail[-1] == "line40" and len(err.tail) == proc.TAIL_LINES
    assert "exit code 7" in str(err) and "sh -c" in str(err) and "line40" in str(err)


def test_check_false_returns_exit_code() -> None:
    assert proc.run(["false"], check=False).returncode == 1


def test_input_env_cwd_and_binary_output(tmp_path) -> None:
    done = proc.run(
        ["sh", "-c", 'cat; printf "%s" "$FOO"; pwd; printf "\\377\\000"'],
        input="in\n",
        env={"FOO": "bar\n"},
        cwd=tmp_path,
        echo_output=False,
    )
    assert done.stdout_bytes.startswith(b"in\nbar\n" + str(tmp_path).encode())
    assert done.stdout_bytes.endswith(b"\xff\x00")


def test_redact_masks_secrets_in_log_and_error() -> None:
    log = ListLog()
    with pytest.raises(proc.CommandError) as info:
        proc.run(["sh", "-c", "echo s3cret; exit 3", "s3cret"], log=log, redact=["s3cret"])
    assert "s3cret" not in "".join(log.lines)
    assert "s3cret" not in str(info.value)


def test_missing_tool_is_a_config_error_with_hint() -> None:
    with pytest.raises(proc.ToolMissingError, match=r"setup\.sh"):
        proc.run(["imagebuilder-no-such-tool-xyz"])
    with pytest.raises(proc.ToolMissingError, match="no-such-tool"):
        proc.require_tools("sh", "no-such-tool-abc")


def test_timeout_kills_whole_process_group(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(proc.CommandTimeoutError) as info:
        # The grandchild ignores SIGTERM: only a group SIGKILL gets rid of it.
        proc.run(
            ["sh", "-c", f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 60' & wait"],
            timeout=1,
        )
    assert time.monotonic() - start < 15
    assert "timed out" in str(info.value)
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {child} survived the timeout")


def test_timeout_holds_when_the_command_never_reads_its_input() -> None:
    start = time.monotonic()
    with pytest.raises(proc.CommandTimeoutError):
        proc.run(["sleep", "30"], input=b"x" * (4 << 20), timeout=1)
    assert time.monotonic() - start < 15
