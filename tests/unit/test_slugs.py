"""Slug rules (pure): generated slugs are always valid, and valid means a safe DNS label."""

from __future__ import annotations

import re
import string

import dns.name
import pytest
from hypothesis import given
from hypothesis import strategies as st

from directory.errors import InvalidInput, InvalidSlug
from directory.slugs import (
    ALPHABET,
    RESERVED_TEST_PREFIXES,
    RESERVED_WORDS,
    SLUG_LENGTH,
    generate_slug,
    validate_slug,
)

# An independent statement of "a hostname label" (RFC 952/1123, lowercase), plus IDNA's
# reservation of "??--" labels.
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

label_like = st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=70)
any_text = st.text(max_size=70)


def is_dns_label(label: str) -> bool:
    if not LABEL.match(label) or label[2:4] == "--":
        return False
    name = dns.name.from_text(label + ".example.")
    return name.labels[0] == label.encode()


def test_generated_slugs_have_the_documented_shape():
    for _ in range(2000):
        slug = generate_slug()
        assert len(slug) == SLUG_LENGTH
        assert set(slug) <= set(ALPHABET)
        assert validate_slug(slug) == slug


@given(st.data())
def test_generated_slugs_always_validate(data):
    """Whatever characters are drawn, the result passes the normal (strict) rules."""
    slug = generate_slug(choice=lambda alphabet: data.draw(st.sampled_from(alphabet)))
    assert validate_slug(slug) == slug
    assert is_dns_label(slug)
    assert not slug.startswith(RESERVED_TEST_PREFIXES)
    assert slug not in RESERVED_WORDS


def test_generation_draws_again_when_a_draw_spells_a_reserved_word(monkeypatch):
    draws = iter("localhos" + "abcdefgh")
    monkeypatch.setattr("directory.slugs.RESERVED_WORDS", frozenset({"localhos"}))
    assert generate_slug(choice=lambda _alphabet: next(draws)) == "abcdefgh"


@given(st.one_of(label_like, any_text), st.booleans())
def test_anything_accepted_is_a_valid_dns_label(candidate, allow_reserved):
    try:
        slug = validate_slug(candidate, allow_reserved=allow_reserved)
    except InvalidSlug:
        return
    assert is_dns_label(slug)
    assert slug == candidate.lower()
    assert candidate.isascii()


@given(st.one_of(label_like, any_text))
def test_normal_hosts_never_get_reserved_names(candidate):
    try:
        slug = validate_slug(candidate)
    except InvalidSlug:
        return
    assert slug not in RESERVED_WORDS
    assert not slug.startswith(RESERVED_TEST_PREFIXES)


@given(st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"))
def test_every_plain_label_is_accepted_for_test_hosts_unless_idna_shaped(label):
    if label[2:4] == "--":
        with pytest.raises(InvalidSlug, match="IDNA"):
            validate_slug(label, allow_reserved=True)
    else:
        assert validate_slug(label, allow_reserved=True) == label


@pytest.mark.parametrize(
    ("slug", "why"),
    [
        ("", "empty"),
        ("a" * 64, "at most 63"),
        ("-abc", "start or end with '-'"),
        ("abc-", "start or end with '-'"),
        ("ab_c", "only letters"),
        ("a.b", "only letters"),
        ("a b", "only letters"),
        ("héllo", "non-ASCII"),
        ("\u212a8s", "non-ASCII"),  # the Kelvin sign lowercases to "k"
        ("xn--abc", "IDNA"),
        ("ab--cd", "IDNA"),
        ("www", "reserved name"),
        ("API", "reserved name"),
        ("localhost", "reserved name"),
        ("test-foo", "reserved for test hosts"),
        ("e2e-x", "reserved for test hosts"),
        ("CI-build", "reserved for test hosts"),
    ],
)
def test_invalid_slugs_are_refused_saying_why(slug, why):
    with pytest.raises(InvalidSlug, match=re.escape(why)) as caught:
        validate_slug(slug)
    assert caught.value.http_status == 422
    assert caught.value.code == "invalid_slug"
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize("slug", ["a", "0", "a-b", "a" * 63, "abc--d", "a--b", "9lives", "ab-cd"])
def test_valid_slugs_are_accepted(slug):
    assert validate_slug(slug) == slug


def test_slugs_are_normalized_to_lowercase():
    assert validate_slug("MyHost-01") == "myhost-01"


@pytest.mark.parametrize("slug", ["www", "test-foo", "e2e-run1", "ci-7"])
def test_test_hosts_may_use_reserved_names(slug):
    assert validate_slug(slug, allow_reserved=True) == slug


def test_the_reserved_lists_hold_what_the_design_names():
    assert {"www", "api", "admin", "relay", "mail", "ns1", "ns2", "localhost"} <= RESERVED_WORDS
    assert {"status", "metrics", "tunnel", "app", "dashboard"} <= RESERVED_WORDS
    assert RESERVED_TEST_PREFIXES == ("test-", "e2e-", "ci-")


def test_a_non_string_is_refused():
    with pytest.raises(InvalidSlug, match="string"):
        validate_slug(12345678)  # type: ignore[arg-type]
