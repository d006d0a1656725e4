"""Credentials are found in a dockerconfigjson the way docker and Kaniko find them."""

from __future__ import annotations

import base64

import pytest

from stagewright.registry.credentials import Credentials, find_credentials, normalize_host
from stagewright.registry.reference import DOCKER_HUB, DOCKER_HUB_CONFIG_KEY


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "key",
    [
        "registry.example.com",
        "https://registry.example.com",
        "https://registry.example.com/v1/",
        "http://registry.example.com/v2/",
        "REGISTRY.example.COM",
    ],
)
def test_key_forms_match_the_host(key: str) -> None:
    config = {"auths": {key: {"auth": _auth("alice", "pw")}}}
    creds = find_credentials(config, "registry.example.com")
    assert creds is not None
    assert creds.basic == ("alice", "pw")
    assert creds.key == key


def test_port_must_match() -> None:
    config = {"auths": {"127.0.0.1:5000": {"auth": _auth("a", "b")}}}
    assert find_credentials(config, "127.0.0.1:5000") is not None
    assert find_credentials(config, "127.0.0.1:5001") is None
    assert find_credentials(config, "127.0.0.1") is None


@pytest.mark.parametrize(
    "key", [DOCKER_HUB_CONFIG_KEY, "docker.io", "index.docker.io", "registry-1.docker.io"]
)
def test_docker_hub_keys(key: str) -> None:
    config = {"auths": {key: {"username": "bob", "password": "pw"}}}
    creds = find_credentials(config, DOCKER_HUB)
    assert creds is not None
    assert creds.basic == ("bob", "pw")


def test_exact_key_wins_over_normalised_match() -> None:
    config = {
        "auths": {
            "https://host.io/v1/": {"auth": _auth("url", "x")},
            "host.io": {"auth": _auth("exact", "y")},
        }
    }
    creds = find_credentials(config, "host.io")
    assert creds is not None
    assert creds.username == "exact"


def test_auth_wins_over_username_and_password() -> None:
    config = {"auths": {"h.io": {"auth": _auth("from-auth", "p:w"), "username": "u"}}}
    creds = find_credentials(config, "h.io")
    assert creds is not None
    assert creds.basic == ("from-auth", "p:w")  # only the first ':' separates


def test_auth_without_padding_is_accepted() -> None:
    encoded = _auth("ab", "c").rstrip("=")
    creds = find_credentials({"auths": {"h.io": {"auth": encoded}}}, "h.io")
    assert creds is not None
    assert creds.basic == ("ab", "c")


def test_identity_and_registry_tokens() -> None:
    config = {
        "auths": {
            "a.io": {"identitytoken": "refresh-me", "username": "00000000"},
            "b.io": {"registrytoken": "bearer-me"},
        }
    }
    a = find_credentials(config, "a.io")
    assert a is not None
    assert (a.identity_token, a.username, a.basic) == ("refresh-me", "00000000", None)
    b = find_credentials(config, "b.io")
    assert b is not None
    assert b.registry_token == "bearer-me"


@pytest.mark.parametrize(
    "config",
    [None, {}, {"auths": {}}, {"credsStore": "desktop"}, {"auths": {"h.io": {}}},
     {"auths": {"h.io": {"auth": "", "email": "x@y"}}}, {"auths": {"other.io": {"auth": "eA=="}}}],
)
def test_no_credentials(config: dict[str, object] | None) -> None:
    assert find_credentials(config, "h.io") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"auth": "%%%"}, "not base64"),
        ({"auth": base64.b64encode(b"no-colon").decode()}, "no 'user:password'"),
        ({"auth": base64.b64encode(b"\xff\xfe:x").decode()}, "not base64"),
        ({"username": 42}, "must be a string"),
        ("not-an-object", "must be an object"),
    ],
)
def test_malformed_entry_names_the_key(entry: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"auths\['h.io'\]") as info:
        find_credentials({"auths": {"h.io": entry}}, "h.io")
    assert message in str(info.value)


def test_auths_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="'auths' must be an object"):
        find_credentials({"auths": ["h.io"]}, "h.io")


def test_secrets_stay_out_of_repr() -> None:
    creds = Credentials(key="h.io", username="u", password="hunter2", identity_token="tok")
    assert "hunter2" not in repr(creds)
    assert "tok'" not in repr(creds)


def test_normalize_host() -> None:
    assert normalize_host("https://Index.Docker.io/v1/") == DOCKER_HUB
    assert normalize_host("http://127.0.0.1:5000/v2/") == "127.0.0.1:5000"
