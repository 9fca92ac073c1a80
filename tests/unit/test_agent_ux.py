"""The agent's output, its agent file, the inspector's ring and guard; Welcome's new fields."""

from __future__ import annotations

import io
import json
import re

import msgspec
import pytest

from relay.agent.inspector import Inspector
from relay.agent.observe import BODY_CAP, RequestTap, Ring
from relay.agent.output import Console, JsonRequestLines, TunnelView
from relay.cli.main import _build, _parser, main
from relay.config import AgentConfig, load_agent_file
from relay.errors import ConfigError
from relay.logs import get_logger
from relay.wire.protocol import Body, FrameCodec, Limits, ReqHead, Welcome

# -- Welcome: url and name are trailing fields with defaults -----------------------------


class OldWelcome(msgspec.Struct, gc=False, tag=2, array_like=True, frozen=True):
    """Welcome as relays and agents before the url and name fields knew it."""

    machine_id: str
    epoch: int
    host_id: str
    slug: str
    ping_interval: float
    limits: Limits


def test_an_old_agent_decodes_a_new_relays_welcome():
    new = Welcome("m1", 7, "h1", "abc", 10.0, Limits(), "http://abc.localhost:8080/", "web")
    data = FrameCodec().message(new)
    (old,) = msgspec.msgpack.Decoder(list[OldWelcome]).decode(data)
    assert old == OldWelcome("m1", 7, "h1", "abc", 10.0, Limits())


def test_a_new_agent_decodes_an_old_relays_welcome():
    data = msgspec.msgpack.encode([OldWelcome("m1", 7, "h1", "abc", 10.0, Limits())])
    welcome, rest = FrameCodec().decode_opening(data, Welcome)
    assert rest == []
    assert (welcome.slug, welcome.url, welcome.name) == ("abc", "", "")


# -- the agent file ------------------------------------------------------------------------


def write(tmp_path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


GOOD = """
server = "https://relay.example.com"
ping_interval = 5
quiet = true

[[tunnel]]
name = "web"
token = "t1"
to = "http://127.0.0.1:3000"

[[tunnel]]
token = "t2"
to = "http://127.0.0.1:4000/api"
"""


def test_agent_file_gives_one_config_per_tunnel_with_the_shared_settings(tmp_path):
    one, two = load_agent_file(write(tmp_path, GOOD), {})
    assert (one.token, one.to, one.name) == ("t1", "http://127.0.0.1:3000", "web")
    assert (two.token, two.to, two.name) == ("t2", "http://127.0.0.1:4000/api", "")
    for cfg in (one, two):
        assert cfg.server == "https://relay.example.com"
        assert cfg.ping_interval == 5.0
        assert cfg.quiet is True


def test_flags_override_the_files_shared_settings(tmp_path):
    (cfg, _) = load_agent_file(write(tmp_path, GOOD), {"ping_interval": "0.5", "quiet": "false"})
    assert cfg.ping_interval == 0.5
    assert cfg.quiet is False


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (GOOD.replace("quiet = true", "quite = true"), "unknown field `quite`"),
        (GOOD.replace('name = "web"', 'nmae = "web"'), "`$.tunnel[0]`"),
        (GOOD.replace("ping_interval = 5", 'ping_interval = "soon"'), "`$.ping_interval`"),
        (GOOD.replace("ping_interval = 5", "ping_interval = -1"), "`$.ping_interval`"),
        (GOOD.replace('token = "t2"\n', ""), "missing required field `token` - at `$.tunnel[1]`"),
        ('token = "t"\n' + GOOD, "token and to belong in each [[tunnel]]"),
        ('server = "x"\n', "missing required field `tunnel`"),
        ("tunnel = []\n", "no [[tunnel]]"),
        (GOOD.replace('"t2"', '"t1"'), "tunnel[1] repeats the token of tunnel[0]"),
        (GOOD.replace("http://127.0.0.1:4000/api", "ftp://x"), "tunnel[1]: --to must be"),
        ("[[tunnel]\n", "not valid TOML"),
    ],
)
def test_a_bad_agent_file_is_refused_naming_the_key(tmp_path, text, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_agent_file(write(tmp_path, text), {})


def test_a_missing_agent_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_agent_file(str(tmp_path / "nope.toml"), {})


@pytest.mark.parametrize("extra", [["--token", "x"], ["--to", "http://127.0.0.1:1"]])
def test_config_with_token_or_to_is_a_usage_error(tmp_path, capsys, extra):
    assert main(["agent", "--config", write(tmp_path, GOOD), *extra]) == 2
    assert "--config gives each tunnel its token" in capsys.readouterr().err


def test_a_bad_agent_file_exits_2_naming_the_key(tmp_path, capsys):
    bad = write(tmp_path, GOOD.replace("quiet", "quietly"))
    assert main(["agent", "--config", bad]) == 2
    assert "unknown field `quietly`" in capsys.readouterr().err


# -- --inspect and --quiet as options --------------------------------------------------------


def test_inspect_listens_on_loopback_unless_allowed():
    base = AgentConfig(token="t", to="http://127.0.0.1:3000")
    for ok in ("127.0.0.1:4040", "[::1]:4040", "localhost:4040"):
        assert msgspec.structs.replace(base, inspect=ok).resolved().inspect == ok
    with pytest.raises(ConfigError, match="loopback only"):
        msgspec.structs.replace(base, inspect="0.0.0.0:4040").resolved()
    allowed = msgspec.structs.replace(base, inspect="0.0.0.0:4040", inspect_allow_remote=True)
    assert allowed.resolved().inspect == "0.0.0.0:4040"
    with pytest.raises(ConfigError, match="inspector's own address"):
        msgspec.structs.replace(base, inspect="127.0.0.1:3000").resolved()


@pytest.mark.parametrize(
    ("argv", "quiet"), [([], False), (["--quiet"], True), (["--no-quiet"], False)]
)
def test_bool_options_are_switches(monkeypatch, argv, quiet):
    monkeypatch.delenv("RELAY_QUIET", raising=False)
    args = _parser().parse_args(["agent", *argv, "--token", "t"])
    assert _build(AgentConfig, args).quiet is quiet


# -- records, ring, lines --------------------------------------------------------------------


class Collect:
    def __init__(self) -> None:
        self.seen: list[tuple[RequestTap, object]] = []

    def request(self, tap, seen) -> None:
        self.seen.append((tap, seen))


def head(method="POST", target="/x", chunk=b"", **kw) -> ReqHead:
    body = Body.SIZED if chunk else Body.NONE
    return ReqHead(1, method, target, [("Host", "h")], body, len(chunk), "", chunk, **kw)


def test_a_record_counts_and_caps_bodies_and_flags_the_cut():
    ring = Ring(10)
    tap = RequestTap("web", "http://127.0.0.1:1", lines=None, ring=ring)
    seen = tap.begin(head(chunk=b"a" * 1000, end=False))
    seen.request_body(b"b" * BODY_CAP)
    seen.response(200, [("Content-Type", "text/plain")])
    for _ in range(3):
        seen.response_body(b"c" * 40_000)
    seen.finish()
    assert seen.req_body is not None and len(seen.req_body) == BODY_CAP
    assert seen.req_truncated and seen.resp_truncated
    assert seen.resp_body is not None and len(seen.resp_body) == BODY_CAP
    assert seen.resp_bytes == 120_000
    assert seen.finished and seen.duration_ms >= 0


def test_without_a_ring_nothing_but_the_summary_is_kept():
    lines = Collect()
    tap = RequestTap("", "http://127.0.0.1:1", lines=lines, ring=None)
    seen = tap.begin(head(chunk=b"abc"))
    seen.response_body(b"xyz")
    seen.finish("cancelled")
    assert seen.req_body is None and seen.resp_body is None
    assert seen.resp_bytes == 3
    assert lines.seen == [(tap, seen)]


def test_the_ring_keeps_the_last_n_and_the_pushed_out_let_go_of_their_bodies():
    ring = Ring(3)
    tap = RequestTap("", "http://127.0.0.1:1", lines=None, ring=ring)
    records = [tap.begin(head(target=f"/{i}")) for i in range(5)]
    for r in records:
        r.response_body(b"x" * (2 * BODY_CAP))  # still growing after being pushed out
    assert [s.target for s in ring] == ["/2", "/3", "/4"]
    assert ring.get(records[0].id) is None
    assert ring.get(records[4].id) is records[4]
    assert ring.get(999) is None
    assert records[0].resp_body is None and records[1].req_body is None
    assert ring.held_bytes() == 3 * BODY_CAP
    assert ring.held_bytes() <= ring.capacity * 2 * BODY_CAP


def test_json_request_line_is_one_structlog_shaped_object():
    out = io.StringIO()
    lines = JsonRequestLines(out)
    tap = RequestTap("web", "http://127.0.0.1:1", lines=lines, ring=None)
    tap.slug, tap.host_id = "abc", "h1"
    seen = tap.begin(head("GET", "/a?b=1"))
    seen.response(404, [])
    seen.response_body(b"nope")
    seen.finish()
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "agent.request"
    assert (entry["method"], entry["path"], entry["status"], entry["bytes"]) == (
        "GET",
        "/a?b=1",
        404,
        4,
    )
    assert (entry["slug"], entry["host_id"], entry["tunnel"], entry["level"]) == (
        "abc",
        "h1",
        "web",
        "info",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["timestamp"])


def test_console_truncates_long_paths_and_shows_failures():
    out = io.StringIO()
    console = Console(out, requests=True, color=False, tunnels=2)
    tap = RequestTap("api", "http://127.0.0.1:1", lines=console, ring=None)
    console.tunnel_state(TunnelView("api", "http://127.0.0.1:1", slug="abc", state="online"))
    ok = tap.begin(head("GET", "/" + "p" * 200))
    ok.response(200, [])
    ok.response_body(b"x" * 2048)
    ok.finish()
    failed = tap.begin(head("GET", "/gone"))
    failed.finish("cancelled")
    request_lines = out.getvalue().splitlines()[-2:]
    assert re.search(r"  api +GET +/p{46}… 200 +[\d.]+ ms +2\.0 KB$", request_lines[0])
    assert "--- cancelled" in request_lines[1]


def test_console_status_block_names_url_target_and_machine():
    out = io.StringIO()
    console = Console(out, requests=False, color=False, tunnels=1, inspector="http://x:1/")
    view = TunnelView("", "http://127.0.0.1:3000", slug="abc", name="site")
    view.url, view.machine, view.state = "https://abc.example.com/", "m-1", "online"
    console.tunnel_state(view)
    view.state, view.detail = "reconnecting", "in 1.5 s (relay silent)"
    console.tunnel_state(view)
    text = out.getvalue()
    assert "inspector http://x:1/" in text
    assert "site (abc)  online" in text
    for part in ("https://abc.example.com/", "http://127.0.0.1:3000", "m-1"):
        assert part in text
    assert text.splitlines()[-1].endswith("site (abc)  reconnecting in 1.5 s (relay silent)")


# -- the inspector's Host guard --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "host", "ok"),
    [
        ("127.0.0.1:4040", "127.0.0.1:4040", True),
        ("127.0.0.1:4040", "localhost:4040", True),
        ("127.0.0.1:4040", "[::1]:4040", True),
        ("127.0.0.1:4040", "evil.test:4040", False),
        ("127.0.0.1:4040", "127.0.0.1:4041", False),
        ("127.0.0.1:4040", "127.0.0.1", False),
        ("127.0.0.1:4040", "10.0.0.1:4040", False),
        ("127.0.0.1:4040", "bad host:x", False),
        ("0.0.0.0:4040", "192.168.1.20:4040", True),
        ("0.0.0.0:4040", "box.lan:4040", False),
    ],
)
def test_inspector_accepts_only_its_own_address_as_host(bound, host, ok):
    inspector = Inspector(bound, Ring(1), get_logger("test"), allow_remote=True)
    assert inspector.own_address(host) is ok
