"""Where the operator's config and state are: a config file the operator named must exist,
an unnamed one may be missing (the defaults, said so), a YAML error names its line and
column, the host's admin UI reads what the host reads, and the state is opened read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonehome_plugin.admin.locate import ENV_CONFIG, ProblemError, Sources, has_table, load_config
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import FILENAME
from phonehome_plugin.testing.simhost import SimHost


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ProblemError, match=r"config file .*confg\.yaml does not exist"):
        Sources.from_files(str(tmp_path / "confg.yaml"), str(tmp_path), {})
    with pytest.raises(ProblemError, match="does not exist"):
        Sources.from_files(None, str(tmp_path), {ENV_CONFIG: str(tmp_path / "gone.yaml")})


def test_an_unnamed_config_file_may_be_missing_and_then_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sources = Sources.from_files(None, "~/somewhere", {})
    assert (sources.config, sources.config_file, sources.config_found) == (
        {},
        Path("config.yaml"),
        False,
    )
    assert sources.data_dir == Path("~/somewhere").expanduser()
    (tmp_path / "config.yaml").write_text("modules:\n  phonehome:\n    mode: log\n")
    assert Sources.from_files(None, ".", {}).settings().mode == "log"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("modules:\n  phonehome: [enabled: false\n", "line 3, column 1: expected ',' or ']'"),
        ("modules: *nope\n", "line 1, column 10: found undefined alias 'nope'"),
        ("a: 1\n\tb: 2\n", "line 2, column 1: found character '\\t'"),
    ],
)
def test_a_yaml_error_names_its_line_and_column(text: str, where: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ProblemError) as raised:
        load_config(config, named=True)
    assert str(raised.value).startswith(f"cannot read {config}: {where}")
    assert "\n" not in str(raised.value)


def test_the_admin_ui_reads_what_its_host_reads(tmp_path: Path) -> None:
    config = {"modules": {"phonehome": {"mode": "offline"}}}
    host = SimHost(
        config, tmp_path / "data", config_path=tmp_path / "c.yaml", load_entrypoints=False
    )
    app = host.start()
    try:
        sources = Sources.of_app(app, {"DO_NOT_TRACK": "1"})
    finally:
        host.shutdown()
    assert sources.config == config and sources.config_file == tmp_path / "c.yaml"
    assert sources.data_dir == tmp_path / "data" and sources.settings().mode == "offline"
    assert sources.environ == {"DO_NOT_TRACK": "1"}


def test_an_invalid_section_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("modules:\n  phonehome:\n    intervall: 60\n")
    sources = Sources.from_files(str(config), str(tmp_path), {})
    with pytest.raises(
        ProblemError, match=r"modules\.phonehome\.intervall: unknown key; telemetry is off"
    ):
        sources.settings()


def test_reading_opens_read_only_and_has_table_tells_old_state_from_new(tmp_path: Path) -> None:
    writer = open_store(tmp_path)
    writer.instance_id()
    writer.close()
    sources = Sources.from_files(None, str(tmp_path), {})
    assert sources.read(lambda store: (store.read_only, has_table(store, "sent_reports"))) == (
        True,
        True,
    )
    assert sources.read(lambda store: has_table(store, "no_such_table")) is False
    (tmp_path / FILENAME).unlink()
    with pytest.raises(ProblemError, match="never ran"):
        sources.read(lambda store: None)
