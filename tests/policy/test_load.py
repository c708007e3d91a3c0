"""Every class of bad input is an error naming the file, the line and the field, with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.policy import PolicyError, resolve
from corral.policy.load import load_policy

RULE = "name: t\negress:\n  - host: api.example.test\n"

CASES = [
    # (id, yaml, line, field, hint fragment)
    ("unknown-key", RULE + "    action: inspect\n    porst: [443]\n", 5, "egress[0].porst",
     "did you mean 'ports'"),
    ("unknown-top-key", "name: t\negres: []\n", 2, "egres", "did you mean 'egress'"),
    ("wrong-type", "name: t\negress:\n  - host: a.test\n    action: direct\n    ports: 443\n",
     5, "egress[0].ports", "list of port numbers"),
    ("wrong-type-bool", RULE + "    action: inspect\n    allow_private: 'yes'\n", 5,
     "egress[0].allow_private", "true or false"),
    ("missing-action", RULE, 3, "egress[0].action", "missing required key 'action'"),
    ("public-suffix", 'name: t\negress:\n  - host: "*.com"\n    action: direct\n', 3,
     "egress[0].host", "public suffix"),
    ("public-suffix-2", 'name: t\negress:\n  - host: "*.co.uk"\n    action: direct\n', 3,
     "egress[0].host", "public suffix"),
    ("star-inside-label", 'name: t\negress:\n  - host: "foo*bar"\n    action: direct\n', 3,
     "egress[0].host", "'*' is only allowed"),
    ("star-middle-label", 'name: t\negress:\n  - action: direct\n    host: api.*.example.com\n',
     4, "egress[0].host", "'*' is only allowed"),
    ("empty-label", 'name: t\negress:\n  - host: "a..example.com"\n    action: direct\n', 3,
     "egress[0].host", "empty label"),
    ("port-range", RULE + "    action: direct\n    ports: [443, 70000]\n", 5, "egress[0].ports",
     "outside 1-65535"),
    ("port-string", RULE + "    action: direct\n    ports: ['443']\n", 5, "egress[0].ports[0]",
     "expected"),
    ("method-case", RULE + "    action: inspect\n    methods: [get]\n", 5, "egress[0].methods",
     "upper case"),
    ("method-unknown", RULE + "    action: inspect\n    methods: [FETCH]\n", 5,
     "egress[0].methods", "unknown HTTP method"),
    ("glob-relative", RULE + "    action: inspect\n    paths: ['repos/**']\n", 5,
     "egress[0].paths", "starts with '/'"),
    ("glob-doublestar", RULE + "    action: inspect\n    paths: ['/a**/b']\n", 5,
     "egress[0].paths", "whole segment"),
    ("unknown-credential", RULE + "    action: inspect\n    credential: gh\n", 5,
     "egress[0].credential", "no credential 'gh'"),
    ("methods-on-direct", RULE + "    action: direct\n    methods: [GET]\n", 5,
     "egress[0].methods", "needs action: inspect or deny"),
    ("paths-on-direct", RULE + "    action: direct\n    paths: ['/x']\n", 5, "egress[0].paths",
     "needs action: inspect or deny"),
    ("credential-on-deny", RULE + "    action: deny\n    credential: gh\ncredentials:\n  gh:\n"
     "    secret: gh\n", 5, "egress[0].credential", "needs action: inspect"),
    ("tls-ca-on-direct", RULE + "    action: direct\n    tls_ca: /ca.pem\n", 5,
     "egress[0].tls_ca", "needs action: inspect"),
    ("bad-size-unit", "name: t\nlimits:\n  memory: 4GB\n", 3, "limits.memory", "GiB"),
    ("bad-time-unit", "name: t\nlimits:\n  idle: 30min\n", 3, "limits.idle", "use s, m or h"),
    ("bad-cpu", "name: t\nlimits:\n  cpu: lots\n", 3, "limits.cpu", "number of CPUs"),
    ("bad-name", "name: My_Team\n", 1, "name", "lower-case"),
    ("duplicate-key", "name: t\nname: u\n", 2, "name", "duplicate key"),
    ("yaml-syntax", "name: t\negress: [\n", 3, "(document)", "YAML syntax error"),
    ("not-a-mapping", "- a\n- b\n", 1, "(document)", "a policy is a mapping"),
    ("bad-format", "name: t\ncredentials:\n  gh:\n    secret: gh\n    format: Bearer\n", 5,
     "credentials.gh.format", "{secret}"),
]


@pytest.mark.parametrize(("text", "line", "field", "hint"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_names_file_line_field(tmp_path: Path, corral_env: dict[str, str], text: str,
                                         line: int, field: str, hint: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    prefix = f"{path}:{line}: {field}: "
    matching = [p for p in info.value.problems if p.startswith(prefix)]
    assert matching, info.value.problems
    assert hint in matching[0], matching[0]
    assert "\n" not in matching[0]


@pytest.mark.parametrize("source", ["env:GH", "file:/etc/token", "cmd:pass show gh"])
def test_host_secret_sources_only_in_config_dir(tmp_path: Path, corral_env: dict[str, str],
                                                source: str) -> None:
    text = f"name: t\ncredentials:\n  gh:\n    secret: '{source}'\n"
    outside = tmp_path / "repo.yaml"
    outside.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(str(outside))
    assert info.value.problems[0].startswith(f"{outside}:4: credentials.gh.secret: ")
    assert "config dir" in info.value.problems[0]
    inside = Path(corral_env["CORRAL_CONFIG"]) / "team.yaml"
    inside.write_text(text)
    binding = load_policy(str(inside)).credentials["gh"]
    assert binding.secret == source and binding.trusted_source
    # A symlink in the config dir pointing outside does not make a repo file trusted.
    link = Path(corral_env["CORRAL_CONFIG"]) / "link.yaml"
    link.symlink_to(outside)
    with pytest.raises(PolicyError, match="config dir"):
        load_policy(str(link))


def test_all_problems_of_a_file_are_reported(tmp_path: Path, corral_env: dict[str, str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text('name: t\negress:\n  - host: "*.com"\n    action: allow\n'
                    "limits: {memory: 4GB}\n")
    with pytest.raises(PolicyError) as info:
        resolve([str(path)])
    lines = sorted(p.split(":")[1] for p in info.value.problems)
    assert lines == ["3", "4", "5"], info.value.problems


def test_missing_file_and_relative_resolution(tmp_path: Path, corral_env: dict[str, str]) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        resolve([str(tmp_path / "absent.yaml")])
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    path.write_text("name: t\nfiles:\n  workspace: ..\n  read: [data]\n  hide: ['~/.ssh']\n")
    rp = resolve([str(path)])
    assert rp.files.workspace == tmp_path
    assert rp.files.read == (tmp_path / "sub" / "data",)
    assert rp.files.hide == (Path("~/.ssh"),)
    assert rp.provenance["files.workspace"][0].line == 3


def test_alias_bomb_and_recursion_are_errors(tmp_path: Path, corral_env: dict[str, str]) -> None:
    bomb = "name: t\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for n, prev in zip("bcdefgh", "abcdefg", strict=True):
        bomb += f"{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    for text in (bomb, "name: t\nx: &x [*x]\n"):
        path = tmp_path / "p.yaml"
        path.write_text(text)
        with pytest.raises(PolicyError) as info:
            load_policy(str(path))
        assert info.value.problems[0].startswith(f"{path}:"), info.value.problems
