"""batchd as an operator runs it: install.sh, systemctl, journalctl, a kill -9 and a restart.

Inside a real systemd (harness.py): ``packaging/install.sh`` installs batchd
into ``/opt/batchd`` from wheels built on the host once per module (offline
inside, seconds instead of an apt-get + compile), the config points at the LLM
emulator running in this test process on host loopback (the machine shares
the network namespace), and the tests drive ``systemctl`` and ``journalctl``.

The ``systemd`` extra (systemd-python) is installed when the host can build
its wheel (libsystemd-dev, pkg-config, a C compiler); otherwise batchd
writes to journald's native socket itself, and these tests check the same
fields either way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import DEFAULT_PATH, SystemdMachine, purge_batchd

from tests.support.emulator import Emulator

pytestmark = [pytest.mark.system, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
INSTALL = str(REPO / "packaging/install.sh")
BATCHD = "/opt/batchd/venv/bin/batchd"
INBOX, OUTBOX = "/srv/batchd/inbox", "/srv/batchd/outbox"
WHEELS = "/tmp/batchd-wheels"
GRACE = 5  # shutdown_grace_seconds in the test config
DROP_IN = "/etc/systemd/system/batchd.service.d/50-backend.conf"
MEMBER, OUTSIDER = "alice", "mallory"  # a person in batchd-users, and one who is not


def hidden(path: str) -> bool:
    return path.startswith(("/root/", "/home/"))


def home_python(m: SystemdMachine) -> str:
    """A folder whose python3 lives under /root, as root's shell has it with pyenv or conda.

    This host's own interpreter when it is such a one (the one running this test), else a
    link made inside the machine: install.sh must not build the service's venv on either.
    """
    real = os.path.realpath(sys.executable)
    if hidden(real) and Path(real).with_name("python3").exists():
        return str(Path(real).parent)
    folder = "/root/.conda-systest/bin"
    m.run("mkdir", "-p", folder)
    m.run("ln", "-sf", "/usr/bin/python3", f"{folder}/python3")
    return folder


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """batchd and all its dependencies as wheels; the extras they cover ("systemd" or "")."""
    work = tmp_path_factory.mktemp("wheelhouse")
    src = work / "src"
    # A copy: building in the checkout would write build/ and *.egg-info into the shared tree.
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", ".*cache", ".venv", "__pycache__", ".benchmarks", "bench", "tests"
        ),
    )
    errors = []
    for extras in ("systemd", ""):
        dist = work / f"dist-{extras or 'none'}"
        spec = f"{src}[{extras}]" if extras else str(src)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dist), spec],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode == 0:
            return dist, extras
        errors.append(r.stderr.strip()[-300:])
    pytest.skip(f"cannot build wheels for batchd here (no package index?): {errors}")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(slots=4)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def config(url: str) -> str:
    return f"""
inbox = "{INBOX}"
outbox = "{OUTBOX}"
shutdown_grace_seconds = {GRACE}

[backend]
url = "{url}"
lanes = 2
max_attempts = 3
backoff_seconds = 0.05
backoff_max_seconds = 0.2

[watch]
stable_seconds = 0.3
rescan_seconds = 5

[log]
progress_every_percent = 20

[pipeline]
system_prompt = "You score job candidates. Reply with JSON: {{\\"score\\": <0-100>}}."
user_template = "Candidate: {{name}}"
id_column = "id"
"""


@pytest.fixture(scope="module")
def installed(machine: SystemdMachine, wheelhouse: tuple[Path, str], emulator: Emulator) -> Iterator[SystemdMachine]:
    """batchd installed by install.sh and configured for the emulator; removed afterwards."""
    m = machine
    dist, extras = wheelhouse
    purge_batchd(m)
    for whl in dist.glob("*.whl"):
        m.write_file(f"{WHEELS}/{whl.name}", whl.read_bytes())
    (batchd_whl,) = dist.glob("batchd-*.whl")
    started = time.monotonic()
    # From a root shell whose python3 is pyenv's or conda's, under /root (ProtectHome= hides it).
    path = f"{home_python(m)}:{DEFAULT_PATH}"
    assert hidden(m.run("sh", "-c", "command -v python3", env={"PATH": path}).stdout.strip())
    r = m.run(
        INSTALL,
        "--source",
        f"{WHEELS}/{batchd_whl.name}",
        check=False,
        timeout=300,
        env={"BATCHD_INSTALL_EXTRAS": extras, "BATCHD_PIP_ARGS": f"--no-index --find-links {WHEELS}", "PATH": path},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "using /usr/bin/python3" in r.stdout, r.stdout
    print(f"install.sh (extras {extras!r}) took {time.monotonic() - started:.1f}s")
    for user in (MEMBER, OUTSIDER):
        m.run("useradd", "--no-create-home", user, check=False)
    m.run("usermod", "-aG", "batchd-users", MEMBER)  # as the README tells the operator
    m.write_file("/etc/batchd/batchd.toml", config(emulator.url), mode=0o640, owner="root:batchd")
    try:
        yield m
    finally:
        purge_batchd(m)
        for user in (MEMBER, OUTSIDER):
            m.run("userdel", user, check=False)
        m.run("rm", "-rf", WHEELS, "/root/.conda-systest", check=False)
        # Leave the shared machine's journal as we found it (empty of batchd): later tests read
        # `journalctl -u batchd` and must not see this module's warnings (a kill -9, a failed request).
        m.journalctl("--rotate", "--vacuum-size=1", check=False)


@pytest.fixture
def service(installed: SystemdMachine, emulator: Emulator) -> Iterator[SystemdMachine]:
    """A stopped batchd with an empty inbox, outbox and journal database."""
    m = installed
    emulator.clear_faults()
    emulator.reset_calls()
    emulator.latency = 0.0
    m.systemctl("stop", "batchd", check=False)
    m.systemctl("reset-failed", "batchd", check=False)
    m.run("sh", "-c", f"rm -rf {INBOX}/* {OUTBOX}/* {OUTBOX}/.[!.]* /var/lib/batchd/*", check=False)
    yield m
    m.systemctl("stop", "batchd", check=False)


def drop_csv(m: SystemdMachine, name: str, rows: list[tuple[str, str]]) -> list[str]:
    """A CSV dropped as a member of batchd-users would; returns its ids in order."""
    text = "id,name\n" + "".join(f"{i},{n}\n" for i, n in rows)
    m.write_file(f"{INBOX}/{name}", text, mode=0o640)
    m.run("chgrp", "batchd-users", f"{INBOX}/{name}")
    return [i for i, _ in rows]


def outbox_ids(m: SystemdMachine, stem: str) -> tuple[list[str], list[str]]:
    def ids(name: str) -> list[str]:
        path = m.path(f"{OUTBOX}/{stem}/{name}")
        return [orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines() if line.strip()]

    return ids("results.jsonl"), ids("errors.jsonl")


def published(m: SystemdMachine, stem: str, timeout: float) -> dict[str, Any]:
    metrics = m.path(f"{OUTBOX}/{stem}/metrics.json")
    try:
        m.wait_for(lambda: metrics.exists() or not m.is_active("batchd"), timeout=timeout, what=f"outbox {stem}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{m.diagnostics()}") from exc
    assert metrics.exists(), m.diagnostics()
    loaded: dict[str, Any] = orjson.loads(metrics.read_bytes())
    return loaded


def test_start_status_journal_and_clean_stop(service: SystemdMachine, emulator: Emulator) -> None:
    m = service
    r = m.systemctl("start", "batchd", check=False)  # Type=notify: returns after READY=1
    assert r.returncode == 0, r.stderr + m.diagnostics()
    assert m.show("batchd", "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}

    emulator.latency = 0.1  # ~2 s for the job: the heartbeat logs job_progress on the way
    rows = [(f"c{i:03d}", f"Candidate {i}") for i in range(40)]
    rows[7] = ("c007", "<<FAIL:500>> always crashes the runner")  # retried, then errors.jsonl
    ids = drop_csv(m, "candidates.csv", rows)
    metrics = published(m, "candidates", timeout=60)
    assert metrics["status"] == "completed", metrics
    results, errors = outbox_ids(m, "candidates")
    assert sorted(results + errors) == sorted(ids) and errors == ["c007"]

    # systemctl status: running, with our one-line status (idle now, the job done).
    def idle_status() -> str | None:
        text = m.systemctl("status", "batchd", check=False).stdout
        return text if 'Status: "idle, 1 jobs done' in text else None

    try:
        text = m.wait_for(idle_status, timeout=15, what="idle status line")
    except TimeoutError as exc:
        raise AssertionError(m.systemctl("status", "batchd", check=False).stdout + m.diagnostics()) from exc
    assert "active (running)" in text, text

    # The job's story, by its id, with UPPERCASE fields and priorities.
    job_id = metrics["job_id"]

    def told() -> list[dict[str, Any]] | None:
        entries = m.journal("batchd", f"JOB_ID={job_id}")
        return entries if any(e.get("EVENT") == "job_published" for e in entries) else None

    story = m.wait_for(told, timeout=10, what="job_published in the journal")
    events = [str(e.get("EVENT")) for e in story]
    for name in (
        "job_claimed",
        "job_queued",
        "job_started",
        "job_progress",
        "request_failed",
        "job_finished",
        "job_published",
    ):
        assert name in events, events
    assert events.index("job_claimed") < events.index("job_started") < events.index("job_finished")
    by_event = {str(e["EVENT"]): e for e in story}
    assert by_event["request_failed"]["CUSTOM_ID"] == "c007"
    assert by_event["request_failed"]["PRIORITY"] == "4"
    assert by_event["job_started"]["PRIORITY"] == "6"
    assert by_event["job_claimed"]["INPUT"] == "candidates.csv"
    assert by_event["job_finished"]["COMPLETED"] == "39" and by_event["job_finished"]["FAILED"] == "1"
    assert [e["PERCENT"] for e in story if e["EVENT"] == "job_progress"]
    assert all(e.get("_SYSTEMD_UNIT") == "batchd.service" for e in story)
    assert str(by_event["job_finished"]["MESSAGE"]).startswith(f"job_finished job_id={job_id} input=candidates.csv")

    # The operator's view, as the service user (it owns the state directory).
    st = m.run(BATCHD, "status", "--json", user="batchd")
    view = orjson.loads(st.stdout)
    assert [(v["job_id"], v["state"], v["failed"]) for v in view["recent"]] == [(job_id, "completed", 1)]

    # systemctl reload: SIGHUP, RELOADING=1 ... READY=1, and the unit is back to active (running).
    this_run = "_SYSTEMD_INVOCATION_ID=" + m.show("batchd", "InvocationID")["InvocationID"]
    m.systemctl("reload", "batchd")
    m.wait_for(
        lambda: m.journal("batchd", "EVENT=config_reloaded", this_run), timeout=10, what="config_reloaded logged"
    )
    m.wait_for(
        lambda: m.show("batchd", "ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"},
        timeout=10,
        what="active (running) after the reload",
    )

    doctor = m.run(BATCHD, "doctor", user="batchd", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    sandbox = r"^OK   batchd\.service sandbox exposure [01]\.\d \(<= 2\.0\)$"
    assert re.search(sandbox, doctor.stdout, re.M), doctor.stdout
    assert f"OK   ollama backend at {emulator.url} answers" in doctor.stdout

    # A clean stop: SIGTERM, STOPPING=1, exit 0 well within TimeoutStopSec.
    started = time.monotonic()
    m.systemctl("stop", "batchd")
    took = time.monotonic() - started
    props = m.show("batchd", "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
    assert took < GRACE + 5, took
    assert m.journal("batchd", "EVENT=daemon_stopped", this_run)


def test_a_member_of_batchd_users_reads_every_result(service: SystemdMachine) -> None:
    """The people who drop files read what comes out; nobody else does (UMask=0027, no world bits)."""
    m = service
    m.systemctl("start", "batchd")
    ids = drop_csv(m, "people.csv", [(f"p{i}", f"Person {i}") for i in range(5)])
    m.write_file(f"{INBOX}/notes.txt", "not a batch\n", mode=0o640)  # rejected: an error record
    published(m, "people", timeout=60)
    published(m, "notes", timeout=30)
    for stem in ("people", "notes"):
        folder = f"{OUTBOX}/{stem}"
        names = m.run("ls", "-A", folder, user=MEMBER).stdout.split()
        assert names, stem
        for name in names:
            r = m.run("cat", f"{folder}/{name}", user=MEMBER, check=False)
            assert r.returncode == 0, f"{MEMBER} cannot read {folder}/{name}: {r.stderr}"
        modes = m.run("stat", "-c", "%a %U %G %n", folder, *(f"{folder}/{n}" for n in names)).stdout.splitlines()
        assert modes[0] == f"750 batchd batchd-users {folder}", modes
        assert all(line.startswith("640 batchd batchd-users ") for line in modes[1:]), modes
    assert set(m.run("ls", f"{OUTBOX}/people", user=MEMBER).stdout.split()) >= {
        "results.jsonl",
        "errors.jsonl",
        "scores.csv",
        "metrics.json",
        "report.html",
        "input.csv",
    }
    text = m.run("cat", f"{OUTBOX}/people/results.jsonl", user=MEMBER).stdout
    assert [orjson.loads(line)["custom_id"] for line in text.splitlines()] == ids
    denied = m.run("cat", f"{OUTBOX}/people/results.jsonl", user=OUTSIDER, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied

    # The live status page at the outbox root is theirs to read too, and says the job finished.
    # (rewritten off the request path, moments after the publish: wait for it with a deadline)
    def page_lists_people() -> bool:
        r = m.run("cat", f"{OUTBOX}/!status.json", user=MEMBER, check=False)
        assert r.returncode != 1 or "No such file" in r.stderr, r.stderr  # never "Permission denied"
        page = orjson.loads(r.stdout) if r.returncode == 0 else {}
        return any(j.get("outbox") == "people" and j.get("input") == "people.csv" for j in page.get("recent", []))

    m.wait_for(page_lists_people, timeout=20, what="!status.json listing the finished job")
    assert "<html" in m.run("cat", f"{OUTBOX}/!status.html", user=MEMBER).stdout.lower()


def test_doctor_run_by_root_checks_the_backend_a_drop_in_set(service: SystemdMachine, emulator: Emulator) -> None:
    """`systemctl edit batchd` -> Environment=: the service and root's `batchd doctor` both use it."""
    m = service
    other = Emulator(slots=2)
    other.start()
    try:
        m.write_file(DROP_IN, f"[Service]\nEnvironment=BATCHD_BACKEND__URL={other.url}\n")
        m.systemctl("daemon-reload")
        m.systemctl("start", "batchd")
        record = "/var/lib/batchd/effective-settings.json"
        m.wait_for(lambda: m.path(record).exists(), timeout=15, what="the effective settings recorded")
        # Root's shell has no BATCHD_* of its own; /usr/local/bin/batchd runs the command as batchd.
        doctor = m.run("/usr/local/bin/batchd", "doctor", check=False)
        lines = doctor.stdout.splitlines()
        assert lines and lines[0].startswith(f"configuration: service's effective settings from {record} (written "), (
            doctor.stdout + doctor.stderr
        )
        assert f"OK   ollama backend at {other.url} answers" in lines, doctor.stdout
        assert emulator.url not in doctor.stdout
        assert "OK   results are readable by group batchd-users (files 0640, folders 0750)" in lines, doctor.stdout
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        # The file names no secret and is the service's own (0640 batchd:batchd in a 0750 state dir).
        assert m.run("stat", "-c", "%a %U %G", record).stdout.split() == ["640", "batchd", "batchd"]
        # And the daemon itself talks to that server, not the TOML's.
        drop_csv(m, "routed.csv", [("r1", "Ada")])
        assert published(m, "routed", timeout=60)["status"] == "completed"
        assert other.chat_count >= 1 and emulator.chat_count == 0
    finally:
        m.run("rm", "-rf", DROP_IN.rsplit("/", 1)[0], check=False)
        m.systemctl("stop", "batchd", check=False)
        m.systemctl("daemon-reload", check=False)
        other.stop()


def test_kill_9_mid_job_then_start_resumes_every_id_once(service: SystemdMachine, emulator: Emulator) -> None:
    m = service
    m.systemctl("start", "batchd")
    emulator.latency = 0.03  # ~60 req/s on two lanes: the job takes several seconds
    ids = drop_csv(m, "long.csv", [(f"r{i:04d}", f"Person {i}") for i in range(500)])

    # Mid-job, systemctl status shows progress, rate and ETA.
    progress = re.compile(r"long\.csv: [\d,]+/500 \(\d+\.\d%\), [\d.]+ req/s, ETA \w+, queue 0")
    m.wait_for(
        lambda: progress.fullmatch(m.show("batchd", "StatusText")["StatusText"]),
        timeout=30,
        what="a progress status line",
    )
    m.wait_for(lambda: emulator.chat_count >= 120, timeout=30, what="120 requests answered")

    m.systemctl("kill", "-s", "KILL", "batchd")
    m.wait_for(lambda: m.show("batchd", "Result")["Result"] == "signal", timeout=10, what="batchd killed")
    assert not m.path(f"{OUTBOX}/long").exists()
    sent_before = emulator.chat_count

    m.systemctl("start", "batchd")
    metrics = published(m, "long", timeout=60)
    assert metrics["status"] == "completed", metrics
    results, errors = outbox_ids(m, "long")
    assert results == ids and errors == []  # every custom_id exactly once, in input order
    assert emulator.chat_count - sent_before < 500 - 100  # resumed, not started over
    assert m.is_active("batchd")
    journal = m.journal("batchd", f"JOB_ID={metrics['job_id']}")
    assert [e.get("EVENT") for e in journal].count("job_started") == 2


def test_native_journal_protocol_reaches_journald(installed: SystemdMachine) -> None:
    """The fallback for hosts without systemd-python: same fields, straight to journald's socket."""
    m = installed
    code = (
        "import structlog\n"
        "from batchd import logs\n"
        "logs.configure(target='journald', journal_send=logs.NativeJournal())\n"
        "structlog.get_logger().warning('native_probe', job_id='native-1', custom_id='row 1', note='a\\nb')\n"
    )
    m.run("/opt/batchd/venv/bin/python", "-c", code)
    (entry,) = m.wait_for(lambda: m.journal(None, "JOB_ID=native-1"), timeout=10, what="the native entry")
    assert (entry["EVENT"], entry["PRIORITY"], entry["CUSTOM_ID"], entry["SYSLOG_IDENTIFIER"]) == (
        "native_probe",
        "4",
        "row 1",
        "batchd",
    )
    assert entry["NOTE"] == "a\nb"


def test_a_member_cancels_their_own_job_and_another_member_cannot(service: SystemdMachine, emulator: Emulator) -> None:
    """``NAME.cancel`` from the share, as two members of batchd-users: the dropper's cancels within a
    second or two; the other member's is refused, removed, logged naming them and shown on the page."""
    m = service
    other = "bob"  # a second member (mallory is outside the group)
    m.run("useradd", "--no-create-home", other, check=False)
    m.run("usermod", "-aG", "batchd-users", other)
    emulator.latency = 0.05  # 400 rows on 2 lanes: ~10 s, time enough to cancel
    try:
        m.systemctl("start", "batchd")
        text = "id,name\n" + "".join(f"c{i},Person {i}\n" for i in range(400))
        # dropped as alice does from her shell: written under a dot name, renamed into place
        m.run("sh", "-c", f"cat > {INBOX}/.big.part && mv {INBOX}/.big.part {INBOX}/big.csv", user=MEMBER, input=text)

        def running() -> bool:
            views = orjson.loads(m.run(BATCHD, "status", "--json").stdout)
            return any(v["input"] == "big.csv" and v["state"] == "running" and v["done"] > 5 for v in views["active"])

        m.wait_for(running, timeout=60, what="big.csv running")
        m.run("touch", f"{INBOX}/big.csv.cancel", user=other)  # bob's: refused
        m.wait_for(lambda: not m.path(f"{INBOX}/big.csv.cancel").exists(), timeout=10, what="bob's .cancel removed")
        assert running(), "another member's .cancel stopped the job"

        def refusal_shown() -> bool:
            page = orjson.loads(m.path(f"{OUTBOX}/!status.json").read_bytes())
            return any(r["user"] == other and r["reason"] == "not_the_owner" for r in page.get("cancel_refused", []))

        m.wait_for(refusal_shown, timeout=15, what="the refusal on the status page")
        logged = [e for e in m.journal("batchd") if e.get("EVENT") == "cancel_refused"]
        assert logged and logged[-1].get("USER") == other, logged[-1:]
        started = time.monotonic()
        m.run("touch", f"{INBOX}/big.csv.cancel", user=MEMBER)  # alice's own: obeyed
        metrics = published(m, "big", timeout=10)
        took = time.monotonic() - started
        assert metrics["status"] == "cancelled" and took < 3.0, (metrics["status"], took)
        assert not m.path(f"{INBOX}/big.csv.cancel").exists()
        cancelled = [e for e in m.journal("batchd") if e.get("EVENT") == "job_cancel_dropped"]
        assert cancelled and cancelled[-1].get("USER") == MEMBER
    finally:
        m.systemctl("stop", "batchd", check=False)
        m.run("userdel", other, check=False)
